"""One LightningModule for every task: a Hugging Face model, a loss from conf/loss, metrics and a
test report from the task, optimizer/scheduler from conf/optimizer and conf/scheduler."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only

from tunelab import peft_adapters, predictions
from tunelab import run_layout as layout
from tunelab.adalora import regularization
from tunelab.callbacks import ReleaseGradsOnException, average_into_weights_only_checkpoint, evaluate_the_average
from tunelab.checkpoints import VAL_METRICS
from tunelab.compiling import uses_cuda_graphs
from tunelab.data.sampling import REPEAT
from tunelab.metric_states import epoch_states, keep_float32_states, restore_epoch_states
from tunelab.metrics import MeanLoss
from tunelab.model import build_model, takes_token_types
from tunelab.resilience import find_resilience
from tunelab.rng import checkpoint_rng_states, restore_rng_states
from tunelab.optim import (apply_restored_schedule, build_optimizer, build_scheduler, clip_gradients, grad_norm,
                           may_fuse, remember_param_groups)
from tunelab.tasks import get_task

log = logging.getLogger(__name__)

TRAIN_EPOCH_STATES = "tunelab_train_epoch_states"  # a checkpoint saved mid-epoch: its epoch's train metrics so far
# batch entries for the loss / predictions.jsonl / metrics, not the model
NOT_MODEL_INPUTS = ("labels", "index", REPEAT)


class TransformerModule(pl.LightningModule):
    """Every argument is a plain config dict or value, saved as hyper-parameters, so a checkpoint alone
    rebuilds the module (`TransformerModule.load_from_checkpoint(path)`)."""

    def __init__(
        self,
        model: Mapping[str, Any],
        task: str,
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        label_names: Sequence[str] = (),
        class_counts: Sequence[int] | None = None,
        label_info: Mapping[str, Any] | None = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        peft: Mapping[str, Any] | None = None,
        train_metrics: bool = True,
    ) -> None:
        super().__init__()
        # not sent to the loggers: tunelab.tracking logs the whole run config, whose group choices these
        # dicts would overwrite on W&B (`loss: focal` -> the loss settings)
        self.save_hyperparameters(logger=False)
        # label_info: what the data says beyond the names (target mean / std, decision threshold, training
        # examples), stored with them so a checkpoint maps outputs to labels as its training run did
        label_info = dict(label_info or {})
        self.task = get_task(task).with_labels(list(label_names), label_info)
        num_labels = max(len(label_names), 1)
        self.model = build_model(model, self.task, num_labels, vocab_size=vocab_size, pad_token_id=pad_token_id,
                                 label_names=label_names)
        self._cuda_graphs = uses_cuda_graphs(model)
        self._update_train_metrics = train_metrics
        # compile_eval=false: evaluation runs eager (torch.compiler.set_stance, torch >= 2.6)
        self._eager_eval = (bool(model.get("compile")) and not model.get("compile_eval", False)
                            and hasattr(torch.compiler, "set_stance"))
        self.model = peft_adapters.apply_peft(self.model, peft, self.task)  # conf/peft (none: unchanged)
        # a pair's token type ids only where the model has a type embedding for them (model.takes_token_types)
        self._not_inputs = NOT_MODEL_INPUTS + (() if takes_token_types(self.model.config) else ("token_type_ids",))
        # before a strategy (FSDP) reshapes the parameters
        remember_param_groups(self.model, optimizer.get("layer_decay"))
        self.loss_fn = instantiate(dict(loss))
        self.loss_fn.fit_class_weights(class_counts, label_info.get("train_examples"))
        metrics = self.task.metrics(num_labels)
        # one collection, cloned per stage (separate state for train/val/test)
        self.train_loss, self.val_loss, self.test_loss = MeanLoss(), MeanLoss(), MeanLoss()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_report_metric = self.task.report_metric(num_labels)
        self.test_report: dict | None = None
        self._prediction_batches: list = []
        self._stages_run: set[str] = set()  # stages with a batch this epoch (log_epoch_metrics)
        # a mid-epoch checkpoint's train metric states, put back once the precision plugin has converted the module
        self._restored_epoch_states: dict | None = None
        self._fit_started = False
        self.predictions: list[dict] | None = None  # the last test / predict epoch's rows (rank 0)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in self._not_inputs}
        if self._eager_eval and not self.training:
            with torch.compiler.set_stance("force_eager"):
                return self.model(**inputs).logits
        if self._cuda_graphs:  # this step's replay may overwrite the previous step's (consumed) outputs
            torch.compiler.cudagraph_mark_step_begin()
        return self.model(**inputs).logits

    def step(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor | None:
        """Shared by training, validation and test: loss, metric updates, loss logging. Returns None for
        a training batch the non-finite-loss guard skips (Lightning then skips the optimizer step)."""
        labels = batch["labels"]
        logits = self(batch)
        targets = self.task.loss_targets(labels)
        loss = self.loss_fn(logits, targets)
        if stage == "train" and not self._loss_is_usable(loss):
            return None
        self._stages_run.add(stage)
        if batch.get(REPEAT):  # dealt to this DDP rank a second time: trained on, not counted again
            return loss
        if stage != "train" or self._update_train_metrics:
            preds, gold = self.task.metric_inputs(logits.detach(), labels)
            getattr(self, f"{stage}_metrics").update(preds, gold)
            if stage == "test" and self.test_report_metric is not None:
                self.test_report_metric.update(preds, gold)
        if stage == "test":
            self._keep_predictions(batch, logits)
        getattr(self, f"{stage}_loss").update(loss, self.loss_fn.batch_weight(targets))
        # the step loss only on the steps Lightning writes to the loggers: on the others it would be
        # stored for nobody, at the cost of a self.log call. Not prog_bar: that would make the loss a
        # Python number after every batch (a GPU sync per step); tunelab.progress shows it at its refreshes
        if stage == "train" and self._logs_step_values():
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss  # the metrics and epoch losses are logged once per epoch (log_epoch_metrics)

    def _logs_step_values(self) -> bool:
        """Lightning's own rule for the steps whose values reach the loggers (log_every_n_steps, the
        step that stops a run, every step of fast_dev_run)."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True) or self.trainer.fast_dev_run)

    def log_epoch_metrics(self, stage: str) -> None:
        """Log the stage's metrics and mean loss (synced across ranks by compute()) and reset them. Once per
        epoch, not self.log(metric) every step: Lightning moves and re-registers a logged Metric on every
        call."""
        metrics, loss = getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_loss")
        # whether the stage ran, not whether this rank updated: a rank given only repeated batches computes
        # (and syncs) too, or the other ranks would wait for it
        ran = stage in self._stages_run or loss.update_called or any(m.update_called for m in metrics.values())
        self._stages_run.discard(stage)
        values = metrics.compute() if ran and (stage != "train" or self._update_train_metrics) else {}
        if ran:  # train/loss_epoch beside train/loss_step; val/loss, test/loss
            values[f"{stage}/loss_epoch" if stage == "train" else f"{stage}/loss"] = loss.compute()
        if values:
            self.log_dict(values, prog_bar=stage != "train", sync_dist=True)
        metrics.reset()
        loss.reset()

    def _keep_predictions(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor) -> None:
        """Per-example outputs for predictions.jsonl, left on the device until the epoch ends."""
        outputs = self.task.prediction_outputs(logits.detach())
        if outputs is not None and "index" in batch:
            self._prediction_batches.append((batch["index"], batch.get("labels"), outputs))

    def _gather_predictions(self) -> None:
        self.predictions = predictions.gather_rows(self._prediction_batches)
        self._prediction_batches = []

    def _loss_is_usable(self, loss: torch.Tensor) -> bool:
        guard = find_resilience(self.trainer) if self._trainer is not None else None
        return guard is None or guard.check_loss(self.trainer, loss)

    def on_before_optimizer_step(self, optimizer) -> None:
        # the gradient norm at logging steps only (computing it is a reduction over all parameters):
        # an exploding run shows in the logs before it turns into NaNs
        if self._logs_step_values():
            norm = grad_norm(self.parameters())
            if norm is not None:
                self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def training_step(self, batch, batch_idx):
        loss = self.step(batch, "train")
        if loss is None:
            return None
        reg = regularization(self.model)  # AdaLoRA's orthogonality penalty, else None
        if reg is not None:
            self.log("train/orth_reg", reg, on_step=True, on_epoch=False)
            loss = loss + reg
        return loss

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.step(batch, "test")

    def predict_step(self, batch, batch_idx):
        self._keep_predictions(batch, self(batch))

    def on_fit_start(self) -> None:
        keep_float32_states(self)  # after the precision plugin converted the module
        self._fit_started = True
        self._restore_epoch_states()

    def _restore_epoch_states(self) -> None:
        # after the conversion too (FSDP loads its checkpoint after fit start): bf16 would round the restored sums
        if self._restored_epoch_states is not None and self._fit_started:
            restore_epoch_states(self._train_epoch_metrics(), self._restored_epoch_states, self.device,
                                 self.global_rank)
            self._restored_epoch_states = None

    def on_test_start(self) -> None:
        keep_float32_states(self)

    def on_test_epoch_start(self) -> None:
        self._prediction_batches = []

    def on_predict_epoch_start(self) -> None:
        self._prediction_batches = []

    def on_predict_epoch_end(self) -> None:
        self._gather_predictions()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not clip_gradients(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_callbacks(self) -> list[pl.Callback]:
        return [ReleaseGradsOnException()] if self._cuda_graphs else []

    def on_train_start(self) -> None:
        trainer = self.trainer
        if trainer.ckpt_path:  # resumed: the schedule's lr at the restored step, not the checkpoint's lr
            for config in trainer.lr_scheduler_configs:
                apply_restored_schedule(config.scheduler)
        if not trainer.enable_validation or trainer.max_steps < 0 or trainer.val_check_batch in (None, float("inf")):
            return  # (None: a val_check_interval in time, no batch count to check)
        # batches before the first validation: a max_steps below it ends fit with no val/ metric at all
        first = trainer.val_check_batch
        if trainer.check_val_every_n_epoch and trainer.val_check_batch <= trainer.num_training_batches:
            first += (trainer.check_val_every_n_epoch - 1) * trainer.num_training_batches
        if trainer.max_steps * trainer.accumulate_grad_batches < first:
            log.warning("trainer.max_steps=%d ends training before the first validation (after %d batches): no "
                        "val/ metrics, no best checkpoint, no sweep report; set trainer.val_check_interval=<batches> "
                        "below it, or train longer", trainer.max_steps, first)

    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")
        self._gather_predictions()
        if self.test_report_metric is None:
            return
        state = self.test_report_metric.compute()  # synced across ranks
        self.test_report_metric.reset()
        report, text = self.task.report(state, list(self.hparams.label_names))
        self.test_report = report
        self._write_report(report, text)

    @rank_zero_only
    def _write_report(self, report: dict, text: str) -> None:
        out = Path(self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / layout.TEST_REPORT_JSON).write_text(json.dumps(report, indent=2))
        (out / layout.TEST_REPORT_TXT).write_text(text + "\n")
        log.info("Test report (%s):\n%s", out / layout.TEST_REPORT_TXT, text)

    # Resuming must continue the same random streams (dropout masks), not restart them from the seed:
    # without this a resumed run diverges from an uninterrupted one after the first step.
    # callbacks=ema: these hooks run for every checkpoint, the callback's own only for some (tunelab.callbacks)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = checkpoint_rng_states()
        # the best checkpoint is tested: its val metrics, not the last validation's, go beside its test metrics
        checkpoint[VAL_METRICS] = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                                   if k.startswith("val/") and v.numel() == 1}
        if "train" in self._stages_run and not self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            checkpoint[TRAIN_EPOCH_STATES] = epoch_states(self._train_epoch_metrics())
        average_into_weights_only_checkpoint(self.trainer, self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            world_size = self.trainer.world_size if self._trainer is not None else 1
            restore_rng_states(checkpoint["rng_states"], self.global_rank, world_size)
        if self._trainer is not None:  # not for load_from_checkpoint
            evaluate_the_average(self.trainer, checkpoint)
            if TRAIN_EPOCH_STATES in checkpoint:  # saved mid-epoch: the epoch's train/* go on from there
                self._restored_epoch_states = checkpoint[TRAIN_EPOCH_STATES]
                self._restore_epoch_states()
                self._stages_run.add("train")

    def _train_epoch_metrics(self) -> dict[str, Any]:
        return {**dict(self.train_metrics.items(keep_base=True, copy_state=False)), "loss": self.train_loss}

    def configure_optimizers(self):
        optimizer = build_optimizer(self.hparams.optimizer, self, may_fuse(self.trainer))
        steps = self.trainer.estimated_stepping_batches  # inf: max_epochs=-1 without max_steps (no schedule then)
        scheduler = build_scheduler(self.hparams.scheduler, optimizer, int(steps) if math.isfinite(steps) else 0)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
