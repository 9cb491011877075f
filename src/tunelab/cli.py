"""Entry point shared by train.py, eval.py and predict.py: run the pipeline, turn user errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra

from omegaconf import DictConfig

from tunelab import schema
from tunelab.errors import ConfigError, RunInterrupted, SweepRefused, TrainingError

log = logging.getLogger("tunelab")


def launch(config_name: str, project_root: Path) -> None:
    """What train.py / eval.py run: offline defaults, then the Hydra app on conf/<config_name>.yaml.
    The app returns the optimized metric for sweepers (optuna). A bad override (typo, unknown option,
    sweep values without -m) becomes one line naming the fix, exit status 2."""
    os.environ.setdefault("PROJECT_ROOT", str(project_root))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Hydra prints composition errors itself and exits 1; with HYDRA_FULL_ERROR it raises them to us
    # instead (cheaper than composing once more ahead of Hydra to catch them).
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    @hydra.main(version_base="1.3", config_path=str(project_root / "conf"), config_name=config_name)
    def app(cfg: DictConfig) -> float | None:
        return main_entry(cfg)

    try:
        app()
        _exit_if_sweep_jobs_failed()
    except (ConfigError, SweepRefused) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as err:
        print(f"error: {explain_override_error(err, config_name)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as err:
        if str(err).startswith("No trials are completed yet"):  # Optuna has no best trial to report
            _exit_if_sweep_jobs_failed()  # every trial failed: its error lines were printed
            print("error: the search completed no trial: hydra.sweeper.n_trials must be at least 1, and each trial "
                  "must log the optimized metric, which a run that stops before it validates does not (check "
                  "trainer.max_steps, trainer.val_check_interval).", file=sys.stderr)
            sys.exit(2)
        if not str(err).startswith("Only one of --run, --multirun"):
            raise
        # Hydra's flags that exclude each other (-m with --cfg / --info): its own text, on one line
        print(f"error: {err}: --cfg and --info print one run's config, so drop -m.", file=sys.stderr)
        sys.exit(2)


def main_entry(cfg: DictConfig) -> float | None:
    try:
        schema.check(cfg)  # a wrong value fails in a fraction of a second, before torch is imported
        # imported here, not at the top: a mistyped override or value exits before torch and Lightning load
        from tunelab.pipeline import run
        from tunelab.monitoring import monitor

        _one_console_for_lightning()
        metrics = run(cfg)
        optimized = monitor(cfg)[0]
    except (ConfigError, TrainingError) as err:
        # one clear line instead of a traceback: the message names the fix
        _to_log_files(err)
        if _in_sweep():  # the sweep's other jobs still run (and its report); it exits non-zero at the end
            return _sweep_job_failed(err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 3)
    except RunInterrupted as stop:
        from tunelab.resilience import pass_on_preemption

        _to_log_files(stop)
        print(stop, file=sys.stderr)
        pass_on_preemption(stop.signum)  # under submitit: requeue the job
        sys.exit(128 + stop.signum)
    return metrics.get(optimized)


_FAILED_JOBS: list[tuple[str, Exception]] = []  # this sweep's failed jobs, in the one process that runs them


def _in_sweep() -> bool:
    """A job of a sweep whose jobs all run in this process (Hydra's basic launcher: grids, Optuna). Under
    submitit / SLURM each job is a process of its own, whose failure its launcher reports."""
    from tunelab.sweeps import is_multirun, launcher_target

    return is_multirun() and launcher_target().endswith(".BasicLauncher")


def _sweep_job_failed(err: Exception) -> None:
    """A failed sweep job is its error line, named by job. The sweeper gets None, which Optuna's sweeper records as a
    failed trial before it goes on (with a NaN, optuna tells the trial twice and ends the search with a traceback)."""
    from hydra.core.hydra_config import HydraConfig

    from tunelab.sweeps import command_line_overrides, job_label, swept_keys
    from tunelab.tracking import finish_failed_run

    finish_failed_run()
    label = job_label(HydraConfig.get().job.num, command_line_overrides(), swept_keys())
    print(f"error: {label}: {err}", file=sys.stderr)
    _FAILED_JOBS.append((label, err))
    return None


def _exit_if_sweep_jobs_failed() -> None:
    if not _FAILED_JOBS:
        return
    print(f"error: {len(_FAILED_JOBS)} sweep job(s) failed: {'; '.join(label for label, _ in _FAILED_JOBS)}; the "
          "other jobs finished (the sweep report lists them).", file=sys.stderr)
    sys.exit(3 if any(isinstance(err, TrainingError) for _, err in _FAILED_JOBS) else 2)


def _one_console_for_lightning() -> None:
    """The `lightning` package gives its logger a stderr handler of its own and still propagates to the root
    logger, which Hydra has given the console and the run's log file: every Lightning line printed twice.
    And it advertises its cloud services in every run ("💡 Tip: ... litlogger"): dropped."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_adverts)
    if not logging.getLogger().handlers:
        return  # no Hydra logging (a notebook, a test): Lightning's handler is the only console
    lightning_log = logging.getLogger("lightning")
    for handler in list(lightning_log.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_log.removeHandler(handler)


def _no_adverts(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def _to_log_files(err: Exception) -> None:
    """The run's log file keeps the error; the terminal gets it once, as the `error:` line on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (err,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def explain_override_error(err: Exception, config_name: str, argv: list[str] | None = None,
                           swept: set[str] = frozenset()) -> str:
    """One line naming the fix for an unknown key or an unknown group option. `argv`: the command line's
    arguments (default sys.argv[1:]), or a sweep job's overrides, so a suggestion comes from the config the user
    composed; `swept`: a sweep's swept keys."""
    import re

    text = str(err)
    if getattr(err, "override", None):  # OverrideParseException: Hydra's grammar rejected the text
        return f"cannot parse the override {err.override!r}: {text.splitlines()[0]} (quote values with special characters)"
    key = re.search(r"Could not override '([^']+)'", text)
    if key:
        return _unknown_key(key.group(1), config_name, sys.argv[1:] if argv is None else argv, swept)
    ambiguous = re.search(r"Ambiguous value for argument '([^'=]+)=([^']*)'", text)
    if ambiguous:  # Hydra's text lists three readings; the sweep is what researchers mean
        key, values = ambiguous.groups()
        return (f"{key}={values} lists several values: add -m to sweep over them "
                f"(python train.py -m ... {key}={values}), or write {key}=[{values}] for a list.")
    swept = re.search(r"Sweeping over Hydra's configuration is not supported : '(hydra\.sweeper\.params\.[^=]+)=(.*)'", text)
    if swept:  # unquoted, the list is a sweep of Hydra's own config; quoted, the sweeper reads it
        key, values = swept.groups()
        return f"{key}={values} needs quotes around the values: write \"{key}='{values}'\"."
    group = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if group:
        name, option = group.groups()
        return f"{name}={option} is not an option; choose one of: {', '.join(_group_options(name))}"
    return text.splitlines()[0]


def _unknown_key(dotted: str, config_name: str, argv: list[str], swept: set[str] = frozenset()) -> str:
    """`did you mean ...?` from the config these overrides compose (loss=mse has no label_smoothing, though
    the default loss has), falling back to the default config when they do not compose."""
    import difflib

    from omegaconf import OmegaConf

    from tunelab.config import compose_config
    from tunelab.sweeps import override_key

    if dotted.startswith("hydra.sweeper.params.") and dotted.count(".") > 3:
        key = dotted.removeprefix("hydra.sweeper.params.")  # a dotted key is no nested node of the params
        return (f"unknown config key '{dotted}': search {key} with a plain override of a search expression, "
                f"'{key}=interval(<low>, <high>)' or '{key}=choice(<a>, <b>)' (with hparams_search=...).")
    others = [a for a in argv if "=" in a and not a.startswith("-") and override_key(a) != dotted]
    parent, _, leaf = dotted.rpartition(".")
    hint = ""
    for overrides in (others, []):
        try:
            cfg = compose_config(overrides, ".", config_name=config_name)
        except Exception:  # noqa: BLE001 - another bad override: try the default config
            continue
        node = OmegaConf.select(cfg, parent) if parent else cfg
        top, _, rest = dotted.partition(".")
        if node is None and top in cfg.hydra.runtime.choices and "." in rest:  # an entry another option has
            entry = rest.split(".")[0]  # callbacks.early_stopping.patience under callbacks=default
            if entry in cfg[top]:  # there, but null: debug=quick has no progress bar
                return (f"unknown config key '{dotted}': {top}.{entry} is null in this config (an option or the "
                        f"command line switched it off), so it has no settings: drop {dotted}.")
            having = ", ".join(_options_with(top, entry)) or "none"
            return (f"unknown config key '{dotted}': {top}={cfg.hydra.runtime.choices[top]} has no {entry}; the {top} "
                    f"options with {entry}: {having}.")
        if node is None:  # a mistyped group name (optimzer.lr): match the whole dotted key
            close = difflib.get_close_matches(top, [k for k in cfg.keys() if k != "hydra"], n=1)
            hint = f"did you mean {close[0]}.{rest}? " if close and rest else ""
        else:
            close = difflib.get_close_matches(leaf, list(node.keys()), n=1)
            group = parent.split(".")[0]
            choice = cfg.hydra.runtime.choices.get(group) if parent else None
            if close and close[0] != leaf:
                hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? "
            elif choice and leaf not in node:  # the key exists, but not under the option chosen for its group
                if _target_takes(node, leaf):  # a keyword of the class the option builds: optimizer.foreach
                    return (f"unknown config key '{dotted}': {group}={choice} does not set {leaf}, which "
                            f"{node._target_} takes: add it with +{dotted}=<value>.")
                keys = ", ".join(map(str, node.keys()))
                if group in swept or any(a.startswith(f"{group}=") and "," in a for a in argv):  # a sweep of options
                    return (f"unknown config key '{dotted}': {group}={choice} has no {leaf} (its keys: {keys}), and a "
                            f"sweep crosses every {dotted} value with every {group} option: sweep {dotted} in a "
                            f"sweep of its own, with the {group} option that has it.")
                having = ", ".join(_options_with(group, leaf)) or "none"
                has = f"has no {leaf} (its keys: {keys})" if keys else "takes no settings"
                return (f"unknown config key '{dotted}': {group}={choice} {has}; the {group} options with {leaf}: "
                        f"{having}.")
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        if dotted in params:  # the sweep config searches a key this composition lacks
            return (f"unknown config key '{dotted}': {hint}the hparams_search config searches it "
                    "(hydra.sweeper.params): remove it there, or pick an option that has it")
        break
    return f"unknown config key '{dotted}': {hint}(to add a new key write +{dotted}=...)"


def _target_takes(node, key: str) -> bool:
    """Whether the class or function a config node builds (its _target_) takes `key` as a keyword argument."""
    from hydra.utils import get_object

    from tunelab.config_keys import accepted_keys

    try:
        accepted = accepted_keys(get_object(str(node.get("_target_"))))
    except Exception:  # noqa: BLE001 - no _target_, or one that does not import: no such hint
        return False
    return accepted is not None and key in accepted


def _options_with(group: str, key: str) -> list[str]:
    """The options of a config group that have `key` as composed: in their own file, under the group of an
    `@package _global_` file (conf/peft/*), or inherited through their defaults (adalora from lora)."""
    from omegaconf import OmegaConf

    from tunelab.config import compose_config

    having = []
    for option in _group_options(group):
        try:
            node = OmegaConf.select(compose_config([f"{group}={option}"], "."), group)
        except Exception:  # noqa: BLE001 - an option that needs other choices (a launcher plugin): not listed
            continue
        if node is not None and key in node:
            having.append(option)
    return having


def _group_options(group: str) -> list[str]:
    """The options of a config group as Hydra sees them: this project's files and installed plugins'
    (hydra/launcher=basic, submitit_local, ...)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tunelab.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
