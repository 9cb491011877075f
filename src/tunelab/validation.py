"""Every pre-flight check, behind one entry point: `prepare(cfg)` makes the config what the run will see (its
checkpoint resolved, a tested model's data adopted), then `validate(cfg)` raises ConfigError (one line naming the
fix) for a configuration that cannot train, before any model, data or tokenizer loads."""

from __future__ import annotations

import os

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from tunelab import peft_adapters, schema
from tunelab.callback_checks import check_callbacks, check_weight_averaging
from tunelab.checkpoints import adapter_hparams, is_adapter_dir
from tunelab.compiling import check_compile
from tunelab.config_keys import check_keys
from tunelab.data.datamodule import FILE_KEYS, splits_read
from tunelab.data.language_modeling import is_trained_tokenizer
from tunelab.data.readers import existing_file
from tunelab.errors import ConfigError
from tunelab.model import check_head
from tunelab.monitoring import monitor
from tunelab.optim import check_optimizer_settings
from tunelab.resilience import check_skip_runs_alone
from tunelab.rundir import resolve_ckpt_path
from tunelab.sweeps import command_line_keys, is_multirun, job_keys, launcher_target
from tunelab.tasks import check_data, get_task
from tunelab.tested_data import use_trained_data
from tunelab.trainer import check_trainer_settings, strategy_name


def prepare(cfg: DictConfig) -> None:
    """The config as the run will see it, then validate(cfg): a run and a sweep's pre-flight (sweep_checks) check
    the same thing."""
    # the checkpoint this run uses ("last": a run's last.ckpt; in a sweep, the job's own), resolved once, so that
    # validation, the data a checkpoint is tested on, the trackers and metrics.json all name the file, not "last";
    # predict.py takes exported model dirs too, which are no checkpoints, and resolves its own
    if not cfg.get("predict") and not OmegaConf.is_missing(cfg, "ckpt_path"):
        cfg.ckpt_path = resolve_ckpt_path(cfg)
    if not cfg.get("train") and not OmegaConf.is_missing(cfg, "ckpt_path") and cfg.get("ckpt_path"):
        # testing / predicting a trained model: its run's data config, unless the command line chooses one
        use_trained_data(cfg.ckpt_path, cfg, command_line_keys())
    validate(cfg)


def validate(cfg: DictConfig) -> None:
    schema.check(cfg)  # types and ranges of every value first: the checks below rely on them
    check_keys(cfg)  # and no key its code would not read (a misspelled +data.max_lenght)
    _check_required(cfg)  # then every ??? of the config: the checks below read those keys
    if not cfg.get("predict"):  # a ckpt_path that is not a checkpoint (predict.py takes exported models too)
        resolve_ckpt_path(cfg)
    task = get_task(cfg.data.task)
    check_data(task, cfg.data)
    _check_task_keys(cfg, task)
    if is_trained_tokenizer(cfg.model.get("tokenizer")) and not task.resizes_vocab:
        raise ConfigError(f"model.tokenizer={cfg.model.tokenizer} is trained on the language-modelling text of a "
                          f"causal LM run; data.task={task.name} needs a pretrained tokenizer: use model=minilm or "
                          "model=hf (or model.tokenizer=<a local tokenizer dir>).")
    # predicting computes no loss, and testing a .ckpt computes the checkpoint's own: loss=... need not fit
    if not cfg.get("predict") and not _tests_a_checkpoint(cfg):
        _check_loss(cfg, task)
    _check_data_files(cfg)
    check_weight_averaging(cfg)  # before the devices: trainer=fsdp is refused on a CPU for another reason
    _check_devices(cfg)
    check_callbacks(cfg, task)
    check_compile(cfg.model)
    if cfg.get("train") or cfg.model.get("pooling"):  # from config.json alone: before the data and weights load
        check_head(cfg.model, task)
    if cfg.get("train"):  # eval.py / predict.py build no optimizer
        check_trainer_settings(cfg.trainer, bool((cfg.get("scheduler") or {}).get("_target_")))
        check_optimizer_settings(cfg)
    check_sweeper_direction(cfg)
    peft_adapters.validate(cfg)


def _check_required(cfg: DictConfig) -> None:
    """A key the chosen config leaves ??? (data=csv's train_file, model=hf's name_or_path, eval.py's ckpt_path)
    is one line naming it, not OmegaConf's traceback from wherever the key is first read."""
    if cfg.get("predict") and not OmegaConf.select(cfg, "data.predict_file", throw_on_missing=False):
        raise ConfigError("predict.py needs the rows to predict on: pass data.predict_file=<csv / tsv / jsonl file, "
                          "or CoNLL tokens>.")
    if not cfg.get("train") and not OmegaConf.select(cfg, "ckpt_path", throw_on_missing=False):
        if cfg.get("predict"):
            raise ConfigError("predict.py runs a trained model: pass ckpt_path=<path to .ckpt> or <run dir>/hf_model.")
        raise ConfigError("train=false tests a checkpoint: pass ckpt_path=<path to .ckpt>.")
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))  # composed in tests
    unread = {f"data.{key}" for key in FILE_KEYS} - {f"data.{key}" for key in data_files_read(cfg)}
    missing = [k for k in missing if k not in unread]  # e.g. data=csv's train_file, when predicting
    if missing:
        key = missing[0]
        group = key.split(".")[0]
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        chosen = f"{group}={choices[group]} needs it" if choices.get(group) else "it has no default"
        if key == "data.train_file" and _tests_a_checkpoint(cfg):
            raise ConfigError(f"{key} is not set ({chosen}): pass data.test_file=<file> to test the checkpoint on "
                              "it, or data.train_file=<file> to test on the split cut from it.")
        raise ConfigError(f"{key} is not set ({chosen}): pass {key}=<value>.")


def _tests_a_checkpoint(cfg: DictConfig) -> bool:
    """eval.py with a .ckpt, or an adapter dir saved with its hyper-parameters: label names, label_info and
    loss come from there (an adapter saved without them is tested with the config's loss and the label names
    of the training file)."""
    if cfg.get("train") or cfg.get("predict"):
        return False
    path = cfg.get("ckpt_path")
    return not is_adapter_dir(path) or adapter_hparams(path) is not None


def data_files_read(cfg: DictConfig) -> tuple[str, ...]:
    """The data.*_file keys this run reads: predicting, data.predict_file alone; else those of splits_read."""
    if cfg.get("predict"):
        return ()
    test_file = OmegaConf.select(cfg, "data.test_file", throw_on_missing=False)
    return tuple(f"{split}_file" for split in splits_read(_tests_a_checkpoint(cfg), test_file))


def _check_data_files(cfg: DictConfig) -> None:
    """A data file that is not there is one line before the seed, the tokenizer and the model. Only the files
    this run reads (data_files_read)."""
    keys = data_files_read(cfg)
    for key in keys:
        if cfg.data.get(key):
            existing_file(cfg.data[key], f"data.{key}")
    if "train_file" not in keys:
        return
    carved = [f"{split}_fraction" for split in ("val", "test") if not cfg.data.get(f"{split}_file")]
    total = sum(cfg.data.get(key) or 0 for key in carved)
    if total >= 1:  # the splits are cut from the training file: nothing would be left to train on
        raise ConfigError(f"{' + '.join(f'data.{key}' for key in carved)} = {total:g} leaves no training rows; "
                          "keep the sum below 1.")


def _check_task_keys(cfg: DictConfig, task) -> None:
    """A data or loss setting typed for a task this run is not (data.standardize_targets on classification) would be
    ignored without a word; one an option or experiment sets for all its tasks is not refused."""
    given = job_keys()
    for group in ("data", "loss"):
        target = (cfg.get(group) or {}).get("_target_")
        for key, fits in (getattr(get_class(target), "task_keys", {}) if target else {}).items():
            if f"{group}.{key}" in given and task.name not in fits:
                raise ConfigError(f"{group}.{key} is read by {' and '.join(sorted(fits))} tasks only; data.task="
                                  f"{task.name} would ignore it: drop it.")


def _check_loss(cfg: DictConfig, task) -> None:
    loss_cls = get_class(cfg.loss._target_)
    if task.name not in loss_cls.tasks:
        fits = sorted(loss_cls.tasks)
        needs = " or ".join([", ".join(fits[:-1]), fits[-1]] if len(fits) > 2 else fits)
        raise ConfigError(
            f"loss={loss_cls.name} needs a {needs} task; got data={cfg.data.name} ({task.name}). "
            f"Use loss={task.default_loss}."
        )
    key, names = loss_cls.weights_key, cfg.data.get("label_names")
    weights = cfg.loss.get(key)
    if isinstance(weights, ListConfig) and names and len(weights) != len(names):
        raise ConfigError(f"loss.{key} has {len(weights)} entries but data={cfg.data.name} has {len(names)} labels "
                          f"({', '.join(map(str, names))}); give one weight per label or use loss.{key}=balanced.")


# set where a job's processes on several nodes are started together (SLURM, torchrun, by hand per node)
CLUSTER_VARIABLES = ("SLURM_NTASKS", "NODE_RANK", "GROUP_RANK")


def _check_devices(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    devices, accelerator = trainer.get("devices", 1), trainer.get("accelerator", "auto")
    gpus = torch.cuda.device_count()
    # Lightning's own FSDPStrategy (by name: a subclass that runs on CPU, as the tests use, is not refused)
    if strategy_name(trainer.get("strategy")).startswith("fsdp") and (accelerator == "cpu" or not gpus):
        raise ConfigError("trainer=fsdp needs GPUs (Lightning's FSDPStrategy refuses CPU); use trainer=ddp on CPU.")
    # "auto" / -1 count 1 here: Resilience checks again once Lightning resolves them
    processes = _device_count(devices) * int(trainer.get("num_nodes") or 1)
    check_skip_runs_alone(cfg.get("on_nan", "stop"), processes)
    launcher = launcher_target()
    cluster = launcher.endswith("SlurmLauncher") or any(v in os.environ for v in CLUSTER_VARIABLES)
    if int(trainer.get("num_nodes") or 1) > 1 and not cluster:  # rank 0 would wait for the other nodes forever
        raise ConfigError(f"trainer.num_nodes={trainer.num_nodes} needs the other nodes started with it: use "
                          "hydra/launcher=slurm, or start one process per node with NODE_RANK, MASTER_ADDR, "
                          "MASTER_PORT set.")
    if processes > 1 and launcher.endswith("submitit_launcher.LocalLauncher"):
        # Lightning starts a job's other ranks by running its process's entry point again: here submitit's
        raise ConfigError(f"hydra/launcher=submitit_local cannot start the other ranks of a {processes}-process "
                          "job; use the default launcher (drop hydra/launcher) or hydra/launcher=slurm.")
    if not isinstance(devices, int) or devices < 1:
        return  # "auto", -1 or a list of ids: Lightning resolves and validates them
    if accelerator in {"gpu", "cuda"} and devices > gpus:
        raise ConfigError(
            f"trainer.devices={devices} but {gpus} GPU(s) are available; lower trainer.devices "
            "or use trainer.accelerator=cpu."
        )


def _device_count(devices) -> int:
    """Devices per node as the config writes them (2, "2", "0,1", [0, 1]); 1 for "auto" and -1, which
    Lightning resolves."""
    if isinstance(devices, str):
        ids = [d for d in devices.split(",") if d.strip()]
        return len(ids) if "," in devices else int(devices) if devices.strip().isdigit() else 1
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    return devices if isinstance(devices, int) and devices > 0 else 1


def check_sweeper_direction(cfg: DictConfig, sweeper: DictConfig | None = None) -> None:
    """An optuna sweep that maximizes a loss (or minimizes accuracy) runs fine and finds the worst
    config: refuse it before training. `sweeper`: hydra.sweeper, default this job's."""
    name, mode = monitor(cfg)  # also refuses an optimized_metric the task does not log
    if sweeper is None:
        if not is_multirun():
            return
        sweeper = HydraConfig.get().sweeper
    direction = sweeper.get("direction")
    if direction is None or isinstance(direction, (list, tuple)) or not isinstance(getattr(direction, "name", direction), str):
        return  # the basic sweeper has no direction; multi-objective is the user's business
    direction = getattr(direction, "name", direction)
    wanted = mode + "imize"
    if direction != wanted:
        better = "higher" if wanted == "maximize" else "lower"
        raise ConfigError(
            f"hydra.sweeper.direction={direction} but optimized_metric={name} is better {better}; "
            f"set hydra.sweeper.direction={wanted}."
        )
