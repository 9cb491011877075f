"""Hydra callback run before a sweep's first job (conf/hydra/default.yaml). A grid sweep's jobs are all
composed and checked as each run checks itself, so a bad value in the ninth job fails the sweep in seconds,
before eight jobs have trained. Optuna draws its trials as it goes: only its direction is checked, before
it creates the study."""

from __future__ import annotations

import json
import os
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from tunelab.errors import ConfigError, SweepRefused
from tunelab.monitoring import incomparable_losses, monitor
from tunelab.run_layout import is_loss_metric
from tunelab.sweeps import checking_jobs_of, job_label, override_key, sweep_arguments, swept_keys_of


class CheckSweepJobs(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_slurm_devices(config)
        if str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
            check_grid_jobs(config)
        else:
            check_direction(config)


def check_slurm_devices(config: DictConfig) -> None:
    """hydra/launcher=slurm asks SLURM for trainer.devices GPUs and tasks per node: a count, which auto / -1 are not
    (the launcher's config failed to resolve with a traceback)."""
    if not str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    devices = OmegaConf.select(config, "trainer.devices", default=None)
    if not isinstance(devices, int) or devices < 1:
        raise SweepRefused(f"hydra/launcher=slurm asks SLURM for trainer.devices GPUs and tasks per node: give a "
                           f"number (trainer.devices={devices} is resolved only on the node).")


def grid_jobs(config: DictConfig) -> tuple[list[list[str]], set[str]]:
    """Each job's overrides as Hydra's basic sweeper will run them (its params, then the command line's
    overrides, crossed), and the swept keys."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides(sweep_arguments(config.hydra))
    return BasicSweeper.split_arguments(overrides, None)[0], swept_keys_of(config.hydra)


def check_grid_jobs(config: DictConfig) -> None:
    """Every job's config through the run's own pre-flight checks (validation.validate), with the job's
    number and output dir set as the launcher will set them; SweepRefused naming the first failing job."""
    from tunelab.validation import prepare  # torch and the rest: only when a sweep starts

    jobs, swept = grid_jobs(config)
    loader = GlobalHydra.instance().config_loader()
    master = HydraConfig.instance().cfg
    failed: list[tuple[int, list[str], ConfigError]] = []
    ranked_on: dict[tuple[str, str], dict[str, list[str]]] = {}  # (metric, task) -> loss section -> its overrides
    with checking_jobs_of(swept):  # each job's checks tell the sweep's fixed keys from its own
        try:
            for num, overrides in enumerate(jobs):
                try:
                    job = loader.load_sweep_config(master_config=config, sweep_overrides=list(overrides))
                except ConfigCompositionException as err:  # a key this job's options lack (optimizer=sgd,adamw with
                    from tunelab.cli import explain_override_error  # optimizer.betas): Hydra would only warn here

                    line = explain_override_error(err, str(config.hydra.job.config_name), list(overrides), swept)
                    failed.append((num, list(overrides), ConfigError(line)))
                    continue
                with open_dict(job):
                    job.hydra.job.num = job.hydra.job.id = num
                HydraConfig.instance().set_config(job)  # the sweep subdir resolves with this job's number
                subdir = os.path.join(str(job.hydra.sweep.dir), str(job.hydra.sweep.subdir))
                with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):
                    job.hydra.runtime.output_dir = os.path.abspath(subdir)
                HydraConfig.instance().set_config(job)  # a copy is kept: again, for ${hydra:runtime.output_dir}
                try:
                    prepare(job)  # as the job will: its ckpt_path resolved, an eval's trained data adopted
                except ConfigError as err:
                    failed.append((num, list(overrides), err))
                    continue
                section = json.dumps(OmegaConf.to_container(job.loss, resolve=True), sort_keys=True)
                losses = [o for o in overrides if override_key(o).split(".")[0] == "loss"]
                ranked_on.setdefault((monitor(job)[0], job.data.task), {})[section] = losses
        finally:
            HydraConfig.instance().cfg = master
    if failed:
        (num, overrides, err), others = failed[0], [job_label(n, o, swept) for n, o, _ in failed[1:]]
        label = job_label(num, overrides, swept, len(jobs))
        more = f"; {len(others)} more fail the checks: {', '.join(others[:3])}{' and others' if len(others) > 3 else ''}"
        raise SweepRefused(f"{label}: {str(err).rstrip('.')}. No job has run{more if others else ''}.")
    for (metric, task), sections in ranked_on.items():  # the sweep picks and ranks on what each job optimizes
        if is_loss_metric(metric) and len(sections) > 1:
            losses = sorted({o for found in sections.values() for o in found})
            raise SweepRefused(incomparable_losses(metric, losses, task, "optimized_metric="))


def check_direction(config: DictConfig) -> None:
    """An optimizing sweeper's direction against the optimized metric, on the sweep's base config."""
    from tunelab.validation import check_sweeper_direction

    try:
        metric = monitor(config)[0]
    except ConfigError:
        return  # not a metric of the base config's task (a searched data set?): the first trial says so
    swept = swept_keys_of(config.hydra)
    if "seed" in swept:  # from the command line, an hparams_search / experiment file, or hydra.sweeper.params
        given = next(a for a in sweep_arguments(config.hydra) if override_key(a) == "seed")
        raise SweepRefused(f"{given} with hparams_search makes the seed a searched parameter (the study would pick "
                           "the luckiest seed); search with one seed, then run the best config over seeds: "
                           "python train.py -m <best params> seed=0,1,2.")
    searched = [key for key in swept if key.split(".")[0] == "loss"]
    if is_loss_metric(metric) and searched:
        raise SweepRefused(incomparable_losses(metric, searched, config.data.task, "optimized_metric="))
    try:
        check_sweeper_direction(config, config.hydra.sweeper)
    except ConfigError as err:
        raise SweepRefused(str(err)) from None
