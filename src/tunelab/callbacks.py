"""Lightning callbacks specific to tunelab (conf/callbacks/*.yaml)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


class BestCheckpoints(ModelCheckpoint):
    """The best checkpoints on the monitored metric (conf/callbacks/model_checkpoint.yaml), kept across a resume
    into another run dir (ckpt_path=last starts a new one): Lightning forgets the best checkpoints of another
    dirpath, and the resumed run would test the best of the epochs after the resume. They are linked (else
    copied) into this run's checkpoints/ and the restored state names them there."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(followed_into(self.dirpath, state_dict, carry=True))


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt (conf/callbacks/last_checkpoint.yaml). A trainer.max_steps stop inside an epoch
    is saved after its last batch: Lightning then ends the epoch early and restores a checkpoint saved at that
    epoch end as a finished epoch, so training on from it (a longer max_steps or max_epochs) would skip the
    epoch's other batches. Saved here, it resumes as a SIGTERM checkpoint does, after the consumed batches."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        stops_mid_epoch = (0 < trainer.max_steps <= trainer.global_step
                           and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        if stops_mid_epoch and not self._should_skip_saving_checkpoint(trainer):
            # marks this step saved: the epoch-end save Lightning runs next is skipped
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(followed_into(self.dirpath, state_dict, carry=False))


def followed_into(dirpath: str | None, state: dict[str, Any], carry: bool) -> dict[str, Any]:
    """A ModelCheckpoint's restored state for a run whose checkpoints dir is not the one the state names:
    with `carry`, its checkpoint files linked (else copied) into `dirpath` and named there; without, its
    paths dropped (last.ckpt is written anew). Lightning would warn and keep only best_model_path, which
    points into the other run."""
    before = state.get("dirpath")
    if not before or not dirpath or os.path.realpath(before) == os.path.realpath(dirpath):
        return state
    moved: dict[str, str] = {}
    if carry:
        paths = {*state.get("best_k_models", {}), state.get("best_model_path"), state.get("kth_best_model_path")}
        for old in sorted(p for p in paths if p and os.path.isfile(p)):
            moved[old] = os.path.join(dirpath, os.path.basename(old))
            if rank_zero_only.rank == 0 and not os.path.exists(moved[old]):
                os.makedirs(dirpath, exist_ok=True)
                try:
                    os.link(old, moved[old])
                except OSError:  # another file system
                    shutil.copy2(old, moved[old])
    return {**state, "dirpath": dirpath,
            "best_k_models": {moved[p]: v for p, v in state.get("best_k_models", {}).items() if p in moved},
            **{key: moved.get(state.get(key), "") for key in ("best_model_path", "kth_best_model_path", "last_model_path")}}


class ReleaseGradsOnException(pl.Callback):
    """An error inside a CUDA-graph training step (forward, before Lightning zeroes the gradients) leaves
    the previous step's gradients in graph memory that this step's cudagraph_mark_step_begin invalidated;
    Lightning's teardown then moves them to the CPU with the module and raises "accessing tensor output of
    CUDAGraphs that has been overwritten" in place of the error itself. Dropping them first keeps the
    error the user sees the one that happened."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        pl_module.zero_grad(set_to_none=True)


# Lightning's WeightAveraging (callbacks=ema) keeps the average in a checkpoint's state_dict and the raw
# weights beside it (current_model_state), writing both in its own checkpoint hooks. Two of its gaps, closed
# from the module's hooks, which run for every checkpoint (tunelab.module):

def average_into_weights_only_checkpoint(trainer: pl.Trainer, pl_module: pl.LightningModule,
                                        checkpoint: dict[str, Any]) -> None:
    """Lightning skips callbacks' on_save_checkpoint for weights-only checkpoints (ModelCheckpoint(
    save_weights_only=True)): the best checkpoint, chosen on the average's validation, would hold the raw
    weights. Such a checkpoint gets the average alone."""
    if "callbacks" in checkpoint:  # a full checkpoint: the callback's own hook has run
        return
    for callback in trainer.callbacks:
        if isinstance(callback, WeightAveraging):
            callback.on_save_checkpoint(trainer, pl_module, checkpoint)
            checkpoint.pop("current_model_state", None)
            checkpoint.pop("averaging_state", None)


def evaluate_the_average(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Lightning restores callbacks for test too: after a fit, WeightAveraging would then load a full
    checkpoint's raw weights into the module, and test and export would see those instead of the average
    the checkpoint was chosen on. Outside fitting the raw weights are the average (module hooks run first)."""
    if "current_model_state" in checkpoint and trainer.state.fn != TrainerFn.FITTING:
        checkpoint["current_model_state"] = checkpoint["state_dict"]


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection inside the block (for work that builds many objects without cycles);
    afterwards as it was found."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class GarbageCollection(pl.Callback):
    """Python's cyclic garbage collector off while fitting, run on the young generations every
    `every_n_batches` training batches instead. Left automatic, it runs whenever enough new objects piled
    up, and its full collections walk every object the process holds (torch's and transformers' modules:
    0.2 s each on the 2-core CPU): 2.9-3.3 s of collections inside the SST-2 recipe's compiling first step
    there, against 1.2-1.4 s with this callback (the one young-generation collection torch.compile runs after
    compiling), and a stalled step wherever one lands later. Objects in reference cycles that outlive a
    collection are freed after the fit, when automatic collection is back on."""

    def __init__(self, every_n_batches: int = 50) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, not {every_n_batches}")
        self.every_n_batches = every_n_batches
        self._batches = 0
        self._paused = contextlib.ExitStack()  # collection_paused() from the fit's start to its end

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = 0
        self._paused.enter_context(collection_paused())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._batches += 1
        if self._batches % self.every_n_batches == 0:
            gc.collect(1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._paused.close()


class GenerateSample(pl.Callback):
    """After each validation, continue `prompt` by `max_new_tokens` tokens with the causal LM being
    trained and log the text (python logger, W&B table, TensorBoard text). Sampling runs under a forked
    RNG seeded with `seed`, so it never changes the training's random stream (seeds / resume stay exact).
    A no-op for tasks other than causal_lm."""

    def __init__(self, prompt: str = "\n", max_new_tokens: int = 64, do_sample: bool = True,
                 top_k: int | None = 50, temperature: float = 1.0, seed: int = 0) -> None:
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.do_sample, self.top_k, self.temperature, self.seed = do_sample, top_k, temperature, seed
        self.samples: list[tuple[int, str]] = []
        self._said_why_not = False

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not getattr(getattr(pl_module, "task", None), "generates_text", False):
            return
        if generation_drops_the_prefix(pl_module.model):
            if not self._said_why_not:
                log.warning("callbacks.generate logs no samples under peft=prefix: transformers 5's generate() "
                            "ignores the prefix peft passes as past_key_values, so they would be the base model's")
                self._said_why_not = True
            return
        text = self.generate(pl_module, trainer.datamodule.tokenizer)
        self.samples.append((trainer.global_step, text))
        log.info("sample at step %d: %r", trainer.global_step, text)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text("val/sample", columns=["step", "text"], data=[[trainer.global_step, text]])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("val/sample", text, trainer.global_step)

    @torch.no_grad()
    def generate(self, pl_module: pl.LightningModule, tokenizer) -> str:
        model = pl_module.model
        ids = tokenizer(self.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(pl_module.device)
        if ids.shape[1] == 0:
            ids = torch.tensor([[tokenizer.eos_token_id]], device=pl_module.device)
        was_training = model.training
        model.eval()
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                    do_sample=self.do_sample, top_k=self.top_k, temperature=self.temperature,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
        finally:
            model.train(was_training)
        return tokenizer.decode(out[0], skip_special_tokens=True)


def generation_drops_the_prefix(model: torch.nn.Module) -> bool:
    """peft hands prefix tuning's prefixes to generate() as past_key_values; transformers 5 generates with its
    own `cache` and ignores them (warning "Both `past_key_values` and `cache` are set"), while the forward
    pass, and so training, validation and test, use them."""
    config = getattr(model, "active_peft_config", None)
    return config is not None and getattr(config, "peft_type", None) == "PREFIX_TUNING"  # a str enum
