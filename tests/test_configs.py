"""Every option of every config group composes, and each loss validates against a fitting task."""

from pathlib import Path

import pytest
from hydra.utils import get_class, get_object, instantiate

from conftest import ROOT, compose_cfg
from tunelab.validation import validate

GROUPS = ["model", "loss", "optimizer", "scheduler", "data", "trainer", "logger", "callbacks", "experiment", "debug", "peft"]
# data for which each task's loss fits
DATA_FOR_TASK = {"classification": "sst2", "regression": "stsb", "token_classification": "wnut17", "causal_lm": "tiny_shakespeare"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda x: str(x)
)
def test_every_option_composes(tmp_path: Path, group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if group == "data" and option in {"csv", "tsv", "jsonl", "conll", "text"}:
        overrides.append("data.train_file=x")
    if group == "model" and option == "hf":
        overrides.append("model.name_or_path=/some/model")
    cfg = compose_cfg(tmp_path, *overrides, fast=False)
    assert cfg.hydra.runtime.choices[group] == option  # the option itself, not a default an experiment set
    # every config entry with a _target_ points at an importable object
    for key in ("model", "loss", "optimizer", "scheduler", "data", "trainer"):
        target = cfg[key].get("_target_") if cfg.get(key) else None
        if target:
            assert get_object(target) is not None


@pytest.mark.parametrize("loss", options("loss"))
def test_loss_validates_with_a_fitting_task(tmp_path: Path, loss: str) -> None:
    loss_tasks = get_class(compose_cfg(tmp_path, f"loss={loss}").loss._target_).tasks
    fitting = [DATA_FOR_TASK[t] for t in loss_tasks if t in DATA_FOR_TASK]
    if not fitting:
        pytest.skip(f"{loss} fits {sorted(loss_tasks)}: covered by the task-specific tests")
    validate(compose_cfg(tmp_path, f"loss={loss}", f"data={fitting[0]}"))


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_optimizers_are_the_real_classes(tmp_path: Path, optimizer: str) -> None:
    import torch

    cfg = dict(compose_cfg(tmp_path, f"optimizer={optimizer}").optimizer)
    del cfg["layer_decay"]  # shapes the parameter groups (tunelab.optim); every other key is the class's argument
    factory = instantiate(cfg)
    opt = factory([torch.nn.Parameter(torch.zeros(2, 2))])
    assert type(opt).__module__.split(".")[0] in {"torch", "transformers"}


def test_a_callback_monitoring_its_own_metric_takes_that_metrics_direction(tmp_path: Path) -> None:
    """callbacks.<name>.monitor=val/loss with mode auto: min (the run itself still ranks on val/acc, max)."""
    from tunelab.errors import ConfigError
    from tunelab.trainer import instantiate_group

    cfg = compose_cfg(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.monitor=val/loss",
                      "callbacks.model_checkpoint.monitor=val/ece")
    validate(cfg)
    watched = {type(c).__name__: (c.monitor, c.mode) for c in instantiate_group(cfg.callbacks, cfg)
               if getattr(c, "monitor", None)}
    assert watched == {"EarlyStopping": ("val/loss", "min"), "BestCheckpoints": ("val/ece", "min")}
    cfg = compose_cfg(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.monitor=val/lss")
    with pytest.raises(ConfigError, match=r"^callbacks.early_stopping.monitor=val/lss: val/lss is not a metric of "
                                          r"classification runs; use one of val/acc, "):
        validate(cfg)
    # on the run's own metric (monitor auto), a mode against its direction is refused, an agreeing one kept
    validate(compose_cfg(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.mode=max"))
    cfg = compose_cfg(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.mode=min")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == ("callbacks.early_stopping.mode=min, but it watches the run's val/acc, which is maximized: "
                              "leave callbacks.early_stopping.mode=auto, or give the callback a metric of its own "
                              "(callbacks.early_stopping.monitor=...).")
