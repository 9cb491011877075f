"""The trained model in the standard format: `<run dir>/hf_model` (save_pretrained of the tested weights and
the tokenizer, the data's label names as id2label / label2id), which `transformers.pipeline()` and
`from_pretrained` load offline; adapter runs' merged model (peft.merge_on_save) carries the same names.
`check_model_dir` checks such a directory's config.json against the data config (as checkpoints.check_checkpoint
does a .ckpt's header) and `load_module` reads it back (predict.py)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from tunelab import peft_adapters
from tunelab import run_layout as layout
from tunelab.checkpoints import check_label_set, is_adapter_dir, load_checkpoint_header, tested_label_info, trained_data
from tunelab.data.tokenizing import save_tokenizer
from tunelab.errors import ConfigError
from tunelab.model import takes_token_types
from tunelab.schema import usable_positions
from tunelab.module import TransformerModule
from tunelab.tasks import TASKS, Task, get_task
from tunelab.tested_data import input_length

log = logging.getLogger(__name__)

# a sequence head's transformers problem_type -> the tunelab task that trains it
SEQUENCE_PROBLEMS = {t.problem_type: t.name for t in TASKS.values() if t.problem_type}


def set_label_names(model: torch.nn.Module, label_names: Sequence[str]) -> None:
    """id2label / label2id of the model's config (a PeftModel's is its base model's): pipelines answer
    `positive`, not `LABEL_1`. Regression and causal LM have no names and keep the defaults."""
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}


def match_special_tokens(model: torch.nn.Module, tokenizer: Any) -> None:
    """The config's eos / bos / pad ids as the tokenizer has them: a model built from a config for a tokenizer
    trained here (model=gpt2_tiny, model.tokenizer=char) keeps GPT-2's eos id 50256, beyond its vocabulary,
    and generate() would never stop at the end of a text."""
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and getattr(model.config, name, None) != value:
            setattr(model.config, name, value)
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, name, value)


def export(module: TransformerModule, cfg: DictConfig, tokenizer: Any, weights: str | None = None) -> list[Path]:
    """Write the run's models: hf_model for full fine-tuning when `export` is on, the adapter / merged dirs
    of peft.save_adapter / merge_on_save. `weights`: a checkpoint to export instead of the module's
    current weights (the best one, when the run did not test it). Returns the dirs written."""
    if weights:
        module.load_state_dict(load_checkpoint_header(weights)["state_dict"])
    set_label_names(module.model, module.hparams.label_names)
    run_dir, adapted = Path(cfg.paths.output_dir), peft_adapters.is_peft_model(module.model)
    trained_length = input_length(cfg)
    adapter = peft_adapters.save_adapter(module.model, cfg, tokenizer, hparams=module.hparams)
    written = [adapter] if adapter else []
    if adapted and (cfg.get("peft") or {}).get("merge_on_save"):
        # on a copy: the module keeps its adapter (merge_and_unload would unwrap it in place)
        try:
            merged = copy.deepcopy(module.model).merge_and_unload()
        except Exception as err:  # noqa: BLE001 - peft's merge of some method / architecture pairs (IA3 on RoBERTa)
            # fails inside peft: the run's results and checkpoints still get written
            log.error("peft.merge_on_save: peft could not merge the adapter (%s: %s); the checkpoints (and "
                      "peft.save_adapter) hold the trained weights", type(err).__name__, err)
        else:
            written.append(_write_standalone(merged, module.task, tokenizer, run_dir / layout.MERGED_DIR,
                                             trained_length))
    if cfg.get("export") and adapted and not written:  # export=true promises a model to reuse: say where it is
        log.warning("peft=%s writes no hf_model (its model is the base plus an adapter): peft.merge_on_save=true "
                    "saves a plain model in <run dir>/%s, peft.save_adapter=true the adapter alone",
                    (cfg.get("peft") or {}).get("name"), layout.MERGED_DIR)
    if cfg.get("export") and not adapted:  # on a copy: the module keeps its own head
        written.append(_write_standalone(copy.deepcopy(module.model), module.task, tokenizer,
                                         run_dir / layout.HF_MODEL_DIR, trained_length))
    return written


def _write_standalone(model: torch.nn.Module, task: Task, tokenizer: Any, out: Path,
                      trained_length: int | None) -> Path:
    """A plain transformers model dir (hf_model, merged) that predicts on its own as the task does: the task's
    export changes (e.g. standardized regression answers in target units), the tokenizer's special tokens, and
    a tokenizer that cuts inputs where training did (`trained_length`), never beyond the model's positions."""
    task.prepare_export(model)
    match_special_tokens(model, tokenizer)
    positions = usable_positions(model.config.to_dict())
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out, trained_length, positions, takes_token_types(model.config))
    # a model class of tunelab's own (model.pooling=mean) travels as code beside the weights
    remote = ", trust_remote_code=True" if getattr(model.config, "auto_map", None) else ""
    log.info("exported the model to %s (transformers.pipeline(model=...%s) loads it)", out, remote)
    return out


def is_model_dir(path: str | Path | None) -> bool:
    """A save_pretrained directory (hf_model, merged), not an adapter."""
    return path is not None and (Path(path) / "config.json").is_file() and not is_adapter_dir(path)


def exported_task(config: transformers.PretrainedConfig) -> str | None:
    """The task an exported model was trained for, from its config.json: the head class (architectures) and,
    for the sequence head three tasks share, its problem_type. None: a head no tunelab task trains."""
    architecture = (config.architectures or [""])[0]
    if architecture.endswith("LMHeadModel"):  # GPT-2's causal LM class predates the ForCausalLM naming
        return "causal_lm"
    fits = [t.name for t in TASKS.values() if architecture.endswith(t.auto_model.removeprefix("AutoModel"))]
    if len(fits) <= 1:
        return fits[0] if fits else None
    # unset problem_type (a model exported by another tool): one output is regression, as transformers decides
    problem = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")
    return SEQUENCE_PROBLEMS.get(problem)


def exported_label_names(config: transformers.PretrainedConfig) -> list[str]:
    """The label names export() wrote as id2label, in id order; none for a regression head."""
    if exported_task(config) == "regression":
        return []
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def check_model_dir(path: str | Path, cfg: DictConfig) -> transformers.PretrainedConfig:
    """An exported model dir must hold a model of this run's data task and (when data.label_names says
    it) label set, as check_checkpoint requires of a .ckpt: decided from config.json alone, before any
    weights load or rows are predicted. Returns the model's config."""
    config = transformers.AutoConfig.from_pretrained(str(path))
    data, trained = cfg.data, exported_task(config)
    architecture = (config.architectures or ["model without architectures"])[0]
    if trained is None:
        raise ConfigError(f"ckpt_path={path} holds a {architecture} but data={data.name} is a {data.task} task; "
                          f"pass a model exported for {data.task}, or the data it was trained on.")
    if trained != data.task:
        # what in config.json says so: a user who sees only "regression" should know where to look
        said = f"problem_type={config.problem_type}" if config.problem_type else f"num_labels={config.num_labels}"
        evidence = f"{architecture}, {said}" if trained in SEQUENCE_PROBLEMS.values() else architecture
        fix = f"pass a model exported for {data.task}"
        if get_task(trained).writes_predictions():  # a causal LM's own data would not predict either
            fix += f", or the data config it was trained with ({trained_data(path) or f'data.task={trained}'})"
        raise ConfigError(f"ckpt_path={path} is a {trained} model (config.json: {evidence}) but data={data.name} "
                          f"is a {data.task} task; {fix}.")
    check_label_set(path, exported_label_names(config), data, "model")
    return config


def load_module(path: str | Path, cfg: DictConfig) -> TransformerModule:
    """A module around an exported model dir for the data's task (checked by check_model_dir first): the
    head's label names from its config, a multi-label decision threshold as exported (or data.threshold)."""
    config = check_model_dir(path, cfg)
    task = cfg.data.task
    label_info = tested_label_info(get_task(task).exported_label_info(config), cfg.data)
    return TransformerModule(
        model={"name_or_path": str(path)},
        task=task,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        label_names=exported_label_names(config),
        label_info=label_info,
    )
