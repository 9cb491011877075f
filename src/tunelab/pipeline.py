"""What train.py, eval.py and predict.py run: check the config, build the datamodule, module and trainer
from it, fit, test, export the model, write the run's results (predict.py: tunelab.predict)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import DictConfig, OmegaConf

from tunelab import export, peft_adapters, plots, predict, predictions, rundir, sweeps, tracking
from tunelab.checkpoints import (check_checkpoint, is_adapter_dir, resolved_model_paths, saved_val_metrics,
                                 tested_label_info, trained_tokenizer)
from tunelab.csv_history import csv_history, restore_csv_history
from tunelab.data.datamodule import FILE_KEYS
from tunelab.errors import RunInterrupted
from tunelab.module import TransformerModule
from tunelab.resilience import Interrupted, find_resilience
from tunelab.resuming import check_resume
from tunelab.tested_data import check_text_pairs, use_trained_data_settings
from tunelab.trainer import best_checkpoint, build_trainer, end_sweep_job_ranks
from tunelab.validation import prepare

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as the config says; returns the final metrics (also in <run dir>/metrics.json)."""
    if not sweeps.is_multirun():
        return _run(cfg)
    environ = dict(os.environ)
    try:
        return _run(cfg)
    finally:
        end_sweep_job_ranks()  # a failed job's child ranks must not take the sweep down with them
        # a sweep runs its jobs in one process: DDP leaves LOCAL_RANK/WORLD_SIZE/MASTER_PORT and a process
        # group behind, which would make the next job believe its ranks were launched already
        os.environ.clear()
        os.environ.update(environ)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(cfg: DictConfig) -> dict[str, float]:
    prepare(cfg)
    ckpt_path = cfg.get("ckpt_path")
    with rundir.claimed_run_dir(cfg, ckpt_path):
        return _run_in_claimed_dir(cfg, ckpt_path)


def _run_in_claimed_dir(cfg: DictConfig, ckpt_path: str | None) -> dict[str, float]:
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision") or "highest")
    if cfg.get("predict"):  # a trained model over an unlabelled file: in order, no randomness to seed
        return predict.run(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    # not a checkpoint / another task or label set: one line
    trained = check_checkpoint(ckpt_path, cfg, sweeps.command_line_keys())
    if not cfg.train and ckpt_path:  # a trained model is tested on inputs cut as in its training
        use_trained_data_settings(ckpt_path, cfg, sweeps.command_line_keys())
    datamodule = build_datamodule(cfg)
    if trained is not None and cfg.train:  # resuming: the checkpoint's run goes on, under its own settings
        check_resume(ckpt_path, trained, config_hparams(cfg), cfg)
    if trained is not None and not cfg.train:
        check_text_pairs(ckpt_path, cfg.data)
        datamodule.test_trained_model(trained.get("label_names") or (), trained_tokenizer(trained),
                                      ordered_names=bool((trained.get("label_info") or {}).get("ordered_names")))
    if cfg.train:
        datamodule.prepare_data()
        datamodule.setup("fit")
        module = TransformerModule(**module_kwargs(cfg, datamodule))
    elif is_adapter_dir(ckpt_path):  # base model from cfg.model + a saved adapter
        datamodule.prepare_data()
        datamodule.setup("fit")
        kwargs = peft_adapters.adapter_module_kwargs(module_kwargs(cfg, datamodule), ckpt_path, trained)
        module = TransformerModule(**kwargs | {"label_info": tested_label_info(kwargs["label_info"], cfg.data)})
        ckpt_path = None
    else:
        module = TransformerModule.load_from_checkpoint(
            ckpt_path, map_location="cpu", label_info=tested_label_info(trained.get("label_info"), cfg.data),
            model=trained["model"])
    history = csv_history(ckpt_path) if cfg.train and ckpt_path else {}
    trainer = build_trainer(cfg)  # its loggers start: a CSV logger removes the metrics.csv of its dir

    if cfg.train:
        restore_csv_history(trainer.loggers, cfg.paths.output_dir, history)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except Interrupted:  # a stop signal: last.ckpt written, nothing after it (see below)
            pass
    metrics = _as_floats(trainer.callback_metrics)
    guard = find_resilience(trainer)
    if guard is not None and guard.skipped_batches:
        metrics["train/skipped_batches"] = float(guard.skipped_batches)
    if guard is not None and guard.interrupted_checkpoint:
        # stopped by a signal: no test on half-trained weights; the run resumes from last.ckpt. A rank
        # that stopped because another rank got the signal reports SIGTERM, what schedulers send.
        sweep = sweeps.sweep_dir()
        raise RunInterrupted(guard.stop_signal or signal.SIGTERM, guard.interrupted_checkpoint,
                             str(sweep) if sweep else None)
    tested = best_checkpoint(trainer) if cfg.train else ckpt_path
    if cfg.train and tested:  # what sweeps rank and Optuna optimizes: the tested weights' val metrics
        metrics |= saved_val_metrics(tested)
    if cfg.train:
        module = _unwrapped(module, trainer, tested)
    counts = peft_adapters.parameter_counts(module.model)  # before a test wraps the module in FSDP units
    if cfg.test:
        # testing a checkpoint: the module holds its weights already (load_from_checkpoint); Lightning's second
        # restore of it would only warn about the training run's checkpoint callbacks
        trainer.test(module, datamodule=datamodule, ckpt_path=tested if cfg.train else None, weights_only=False)
    metrics |= _as_floats(trainer.callback_metrics) | counts
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        if cfg.test:
            predictions.write(out, module, datamodule.splits["test"].examples)
        if cfg.train:  # the tested (best) weights: hf_model, peft.save_adapter / merge_on_save
            export.export(_unwrapped(module, trainer, tested), cfg, datamodule.tokenizer,
                          weights=None if cfg.test else tested)
        write_results(cfg, metrics, tested if cfg.train else cfg.ckpt_path, trainer.global_step, trainer.loggers)
    return metrics


def _unwrapped(module: TransformerModule, trainer: pl.Trainer, checkpoint: str | None) -> TransformerModule:
    """FSDP wraps the module's layers in place and turns their parameters into shards of flat buffers:
    Lightning cannot load a checkpoint into a module it has wrapped (Lightning-AI/pytorch-lightning#20373),
    and such a module can be neither copied nor saved as a Hugging Face model. Under FSDP: a fresh module
    with the checkpoint's (full-state) weights; otherwise `module` itself."""
    if checkpoint and isinstance(trainer.strategy, FSDPStrategy):
        return TransformerModule.load_from_checkpoint(checkpoint, map_location="cpu")
    return module


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The data config's datamodule; a data file the run does not read may be left ??? (validate checks which)."""
    tokenizer = cfg.model.get("tokenizer") or cfg.model.name_or_path
    unread = {k: None for k in FILE_KEYS if OmegaConf.is_missing(cfg.data, k)}
    return instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed, _recursive_=False, **unread)


def config_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The module's hyper-parameters the config groups give (the data gives the rest)."""
    container = lambda c: OmegaConf.to_container(c, resolve=True) if c is not None else None  # noqa: E731
    return dict(
        model=container(cfg.model),
        task=cfg.data.task,
        loss=container(cfg.loss),
        optimizer=container(cfg.optimizer),
        scheduler=container(cfg.get("scheduler")) or None,
        peft=container(cfg.get("peft")),
        train_metrics=bool(cfg.get("train_metrics", True)),
    )


def module_kwargs(cfg: DictConfig, datamodule) -> dict[str, Any]:
    kwargs = config_hparams(cfg)
    kwargs["model"] = resolved_model_paths(kwargs["model"])
    trained_tokenizer = datamodule.trained_tokenizer_dir()
    if trained_tokenizer:  # the checkpoint names the tokenizer its ids come from
        kwargs["model"]["tokenizer"] = trained_tokenizer
    return kwargs | dict(
        label_names=list(datamodule.label_names),
        class_counts=datamodule.class_counts,
        label_info=datamodule.label_info,
        vocab_size=datamodule.vocab_size,
        pad_token_id=datamodule.pad_token_id,
    )


def write_results(cfg: DictConfig, metrics: dict[str, float], checkpoint: str | None, global_step: int,
                  loggers: Sequence[Any] = ()) -> None:
    """metrics.json, this job's line of the sweep table, the run's plots and what the trackers show (which
    never fail the run)."""
    out = Path(cfg.paths.output_dir)
    overrides = sweeps.command_line_overrides()
    record = rundir.write_metrics(out, metrics, checkpoint, global_step, overrides)
    sweeps.record_job(cfg, record)  # one line in <sweep dir>/results.jsonl
    if cfg.get("plots", True):
        plots.write_run_plots(out)
    tracking.send_run(loggers, cfg, out, metrics, checkpoint)


def _as_floats(metrics: dict) -> dict[str, float]:
    """The run's results among what Lightning holds: not the lr monitor's lr-*, the lr of the last step it logged
    (log_every_n_steps), which is neither a result nor the schedule's final lr."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1 and not k.startswith("lr-")}
