"""The one rule for which metric a run optimizes and in which direction: `monitor(cfg)` is what checkpoints and early
stopping watch, what train.py returns to sweepers, and what reports and plots rank by; `callback_monitor` the same
for a callback given a metric of its own; a loss metric (`val/loss`) is each run's own loss and ranks no objectives."""

from __future__ import annotations

from typing import Any, Mapping

from tunelab.errors import ConfigError


def monitor(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(metric, "max" | "min"): `optimized_metric` when set, else val/<the task's monitor metric>."""
    from tunelab.tasks import get_task  # torch + torchmetrics: only once a config is at hand

    task = get_task(cfg["data"]["task"])
    name = cfg.get("optimized_metric") or f"val/{task.monitor}"
    if not name.startswith("val/"):
        # picking checkpoints or configs on test (or train) numbers would report an optimistic test score
        raise ConfigError(f"optimized_metric={name} is not a validation metric; use val/{name.split('/')[-1]}.")
    return name, task.metric_mode(name)


def callback_monitor(cfg: Mapping[str, Any], metric: str, mode: str, key: str = "callbacks.<name>"
                     ) -> tuple[str, str]:
    """(metric, mode) a best-checkpoint or early-stopping callback (config `key`) watches: monitor `auto` is the run's
    (`monitor`), with which a mode of its own must agree; a metric named with mode `auto` takes that metric's
    direction (val/loss: min)."""
    if metric == "auto":
        name, direction = monitor(cfg)
        if mode not in ("auto", direction):
            raise ConfigError(f"{key}.mode={mode}, but it watches the run's {name}, which is {direction}imized: leave "
                              f"{key}.mode=auto, or give the callback a metric of its own ({key}.monitor=...).")
        return name, direction
    if mode != "auto":
        return metric, mode
    from tunelab.tasks import get_task

    return metric, get_task(cfg["data"]["task"]).metric_mode(metric)


def incomparable_losses(metric: str, losses: list[str], task: str | None, fix: str) -> str:
    """The refusal of ranking configs that train different losses on */loss, naming the metrics to use instead
    (`fix`: how to pass one, "--metric " or "optimized_metric=")."""
    from tunelab.tasks import get_task

    stage = metric.rpartition("/")[0]
    free = get_task(task).loss_free_metrics if task else ()
    names = [f"{stage}/{m}" if stage else m for m in free]
    if free and free[0] == "nll":
        names[0] += " (a proper scoring rule every classification loss logs)"
    return (f"{metric} is each config's own training loss and they train different ones "
            f"({', '.join(losses) or 'their loss sections differ'}), so its values are not comparable; "
            f"pass {fix}{' or '.join(names) or 'with a metric of the task'}.")
