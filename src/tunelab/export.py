"""The trained model in the standard format: `<run dir>/hf_model` (save_pretrained of the tested weights and
the tokenizer, the data's label names as id2label / label2id), which `transformers.pipeline()` and
`from_pretrained` load offline; adapter runs' merged model (peft.merge_on_save) carries the same names.
`load_module` reads such a directory back (predict.py)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from tunelab import peft_adapters
from tunelab.checkpoints import load_checkpoint_header
from tunelab.errors import ConfigError
from tunelab.module import TransformerModule
from tunelab.tasks import get_task

log = logging.getLogger(__name__)

EXPORT_DIR = "hf_model"


def set_label_names(model: torch.nn.Module, label_names: Sequence[str]) -> None:
    """id2label / label2id of the model's config (a PeftModel's is its base model's): pipelines answer
    `positive`, not `LABEL_1`. Regression and causal LM have no names and keep the defaults."""
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}


def export(module: TransformerModule, cfg: DictConfig, tokenizer: Any, weights: str | None = None) -> list[Path]:
    """Write the run's models: hf_model for full fine-tuning when `export` is on, the adapter / merged dirs
    of peft.save_adapter / merge_on_save. `weights`: a checkpoint to export instead of the module's
    current weights (the best one, when the run did not test it). Returns the dirs written."""
    if weights:
        module.load_state_dict(load_checkpoint_header(weights)["state_dict"])
    set_label_names(module.model, module.hparams.label_names)
    written = peft_adapters.save(module.model, cfg, tokenizer, module.task)
    if cfg.get("export") and not peft_adapters.is_peft_model(module.model):
        out = Path(cfg.paths.output_dir) / EXPORT_DIR
        model = copy.deepcopy(module.model)  # the module keeps its own head
        module.task.prepare_export(model)  # e.g. standardized regression answers in target units
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        # a model class of tunelab's own (model.pooling=mean) travels as code beside the weights
        remote = ", trust_remote_code=True" if getattr(model.config, "auto_map", None) else ""
        log.info("exported the model to %s (transformers.pipeline(model=...%s) loads it)", out, remote)
        written.append(out)
    return written


def is_model_dir(path: str | Path | None) -> bool:
    """A save_pretrained directory (hf_model, merged), not an adapter."""
    return path is not None and (Path(path) / "config.json").is_file() and not peft_adapters.is_adapter_dir(path)


def load_module(path: str | Path, cfg: DictConfig) -> TransformerModule:
    """A module around an exported model dir for the data's task: the head's label names from its config."""
    config = transformers.AutoConfig.from_pretrained(str(path))
    task = get_task(cfg.data.task)
    head = task.auto_model.removeprefix("AutoModel")  # ForSequenceClassification, ForTokenClassification, ...
    architecture = (config.architectures or ["?"])[0]
    if not architecture.endswith(head):
        raise ConfigError(f"ckpt_path={path} holds a {architecture} but data={cfg.data.name} is a {task.name} task; "
                          f"pass a model exported for {task.name}, or the data it was trained on.")
    names = [] if config.problem_type == "regression" else [config.id2label[i] for i in range(config.num_labels)]
    return TransformerModule(
        model={"name_or_path": str(path)},
        task=task.name,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        label_names=names,
    )
