"""A training step must not make the host wait for the device. The audit
intercepts the tensor calls that would sync a GPU (`.item()`, `.tolist()`, `bool(t)`, boolean-mask
indexing, ...), so it runs on CPU; it puts the non-finite-loss guard on its accelerator path."""

import json

import pytest
import torch

from conftest import FIXTURES
from tunelab.host_sync import HostSyncAudit, _SyncRecorder

# production callbacks (throttled progress bar / log lines, lr monitor, checkpoints), metrics refreshed and
# logged less often than the audited steps
AUDITED = [
    "model=tiny", f"paths.data_dir={FIXTURES}", "logger=csv", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
    "callbacks.model_summary=null", "callbacks.progress_bar.metrics_every=1000", "callbacks.progress_bar.every_s=1e6",
    "trainer.log_every_n_steps=1000",
    "trainer.max_epochs=1", "test=false", "data.train_limit=96", "data.batch_size=8",
    "+callbacks.audit._target_=tunelab.host_sync.HostSyncAudit",
]
TASKS = {
    "classification": [],
    "classification_focal": ["loss=focal"],
    "classification_mse": ["loss=mse"],
    "regression": ["data=stsb", "loss=mse"],
    "multilabel": ["data=tsv", "data.task=multilabel", f"data.train_file={FIXTURES}/multilabel/train.tsv",
                   "data.text_column=sentence", "data.label_column=labels", "loss=bce", "loss.pos_weight=balanced"],
    "token_classification": ["data=conll2003", "loss=token_cross_entropy"],
    "causal_lm": ["data=tiny_shakespeare", "model=gpt2_tiny", "loss=next_token_cross_entropy"],
}
# torch.optim reads its host-side step counters (CPU tensors unless fused: no device sync);
# transformers' eager attention-mask check (`mask.all()`) is inside the model; torch.compile traces it away
NOT_OURS = {"torch.optim", "transformers"}


@pytest.mark.parametrize("task", list(TASKS))
def test_training_steps_do_not_sync_the_device(task, run_cfg) -> None:
    _, run_dir = run_cfg(*AUDITED, *TASKS[task], fast=False)
    audit = json.loads((run_dir / "host_syncs.json").read_text())
    assert audit["steps"] >= 8
    ours = [s for s in audit["sites"] if s["owner"] not in NOT_OURS]
    assert ours == [], f"host syncs in the training step: {ours}"


def test_audit_finds_each_kind_of_host_sync() -> None:
    sites: dict = {}
    x = torch.tensor([1.0, -2.0, 3.0])
    with _SyncRecorder(sites):
        x.sum().item()
        x.tolist()
        bool(x[0] > 0)
        x[x > 0]
        torch.nonzero(x)
        y = x * 2  # device-side work: not a sync
        x[0] = 5.0  # scalar store: not a sync
    ops = sorted(op for _, op, _ in sites)
    assert ops == ["__bool__", "__getitem__", "item", "nonzero", "tolist"], ops
    assert y is not None


def test_audit_counts_per_step_and_by_owner() -> None:
    audit = HostSyncAudit()
    audit.steps = 4
    audit.sites = {("tunelab", "item", "tunelab/module.py:1 (step)"): 8, ("torch.optim", "item", "adam.py:1"): 4}
    assert audit.per_step("tunelab") == 2.0 and audit.per_step() == 3.0
    assert audit.summary()["per_step"] == {"torch.optim": 1.0, "tunelab": 2.0}


def test_progress_bar_shows_the_training_loss_it_reads_at_refreshes() -> None:
    from types import SimpleNamespace

    from tunelab.progress import ThrottledRichProgressBar

    from tunelab.progress import step_loss

    bar = ThrottledRichProgressBar()
    bar._loss = step_loss({"loss": torch.tensor(0.25)})  # what on_train_batch_end keeps of training_step's output
    metrics = {"train/loss_step": torch.tensor(0.75), "train/loss_epoch": torch.tensor(0.5)}  # (the last logging step)
    trainer = SimpleNamespace(training=True, loggers=[], callback_metrics=metrics, progress_bar_metrics={"val/acc": 0.7})
    assert bar.get_metrics(trainer, None) == {"val/acc": 0.7, "train/loss": 0.25}
    trainer.training = False  # validation / epoch end: the epoch's mean loss
    assert bar.get_metrics(trainer, None)["train/loss"] == 0.5
