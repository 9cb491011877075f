"""Past one GPU: trainer=fsdp builds Lightning's FSDPStrategy from the config and runs end to end on 2 CPU
processes (through tests/cpu_fsdp.py: Lightning itself refuses FSDP on CPU), and multi-node settings reach
the SLURM launcher."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from conftest import FIXTURES, compose_cfg, read_metrics, run_script
from tests.ddp_rows import assert_every_row_trained_once
from tunelab.errors import ConfigError
from tunelab.trainer import strategy_name
from tunelab.validation import validate


def test_fsdp_config_instantiates_the_strategy_it_describes(tmp_path) -> None:
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from transformers.models.bert.modeling_bert import BertLayer

    cfg = compose_cfg(tmp_path, "trainer=fsdp", "trainer.strategy.sharding_strategy=HYBRID_SHARD", fast=False)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy_name(cfg.trainer.strategy) == "fsdpstrategy"
    assert strategy.sharding_strategy == ShardingStrategy.HYBRID_SHARD
    precision = strategy.mixed_precision
    assert (precision.param_dtype, precision.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert BertLayer in strategy.kwargs["auto_wrap_policy"]._module_classes
    # the original parameters stay visible: tunelab's weight-decay groups go by parameter shape
    assert strategy.kwargs["use_orig_params"] is True


def test_fsdp_on_cpu_fails_before_training_naming_the_fix(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU machine runs FSDP")
    with pytest.raises(ConfigError, match="use trainer=ddp on CPU"):
        validate(compose_cfg(tmp_path, "trainer=fsdp", "trainer.devices=2"))


def test_fsdp_without_a_best_checkpoint_fails_before_training_naming_the_fix(tmp_path) -> None:
    # the test and the export load the best checkpoint into a fresh module; without one the run would fail
    # after training, testing the module FSDP had wrapped ("'weight' must be 2-D")
    cpu_fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.strategy._target_=tests.cpu_fsdp.CpuFSDPStrategy"]
    with pytest.raises(ConfigError, match="keep callbacks.model_checkpoint with a monitor, or set test=false"):
        validate(compose_cfg(tmp_path, *cpu_fsdp, "callbacks.model_checkpoint=null"))
    validate(compose_cfg(tmp_path, *cpu_fsdp, "callbacks.model_checkpoint=null", "test=false", "export=false"))
    validate(compose_cfg(tmp_path, *cpu_fsdp))


def test_slurm_launcher_asks_for_trainer_num_nodes(tmp_path) -> None:
    cfg = compose_cfg(tmp_path, "hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=3", "trainer.devices=4")
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (3, 4, 4)
    with pytest.raises(ConfigError, match="trainer.num_nodes must be a positive integer"):
        validate(compose_cfg(tmp_path, "trainer.num_nodes=0"))


def test_cpu_ranks_share_the_cores_when_lightning_picks_the_cpu(tmp_path, monkeypatch) -> None:
    """trainer=ddp says accelerator auto: on a machine without a GPU that is the CPU, and each of the two ranks
    gets half the cores (all of them each would spin the ranks' OpenMP threads against each other)."""
    import os

    from tunelab.trainer import build_trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    before = torch.get_num_threads()
    try:
        built = build_trainer(compose_cfg(tmp_path, "trainer=ddp", "trainer.devices=2", "logger=none", fast=False))
        assert built.accelerator.__class__.__name__ == "CPUAccelerator" and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_param_groups_survive_fsdp_flattening_the_parameters(layer_decay) -> None:
    """FSDP shards each parameter into a 1-D view of its flat shard before configure_optimizers: the
    matrices must still get weight decay, biases and LayerNorm weights still not, and under
    optimizer.layer_decay each parameter its layer's learning rate."""
    from tunelab.module import TransformerModule
    from tunelab.optim import param_groups

    module = TransformerModule(model={"name_or_path": None, "from_scratch": True, "config": {
        "model_type": "bert", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16}}, task="classification", loss={"_target_": "tunelab.losses.CrossEntropyLoss"},
        optimizer={"layer_decay": layer_decay}, label_names=["neg", "pos"])

    def groups() -> list[tuple]:
        return [([id(p) for p in g["params"]], g.get("lr"), g["weight_decay"]) for g in param_groups(module, 0.01, 1e-3)]

    before = groups()
    with torch.no_grad():
        for p in module.parameters():
            p.data = p.data.flatten()  # what FSDP's sharded views look like
    assert groups() == before
    assert before[0][0] and before[1][0]
    assert len(before) == (2 if layer_decay is None else 6)  # embeddings, layer0, head: each with and without decay


def test_fsdp_clips_by_norm_through_its_root_module() -> None:
    # Lightning's FSDP precision plugin raises for gradient_clip_algorithm=norm (the GPU experiments clip
    # at 1.0); the norm over every rank's shard is the root FSDP module's clip_grad_norm_
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    from tunelab.optim import clip_gradients

    clipped = []

    class Root(torch.nn.Module):
        def clip_grad_norm_(self, max_norm: float) -> None:
            clipped.append(max_norm)

    strategy = FSDPStrategy()
    strategy.model = Root()
    trainer = SimpleNamespace(strategy=strategy, precision_plugin=FSDPPrecision("bf16-mixed"))
    assert clip_gradients(trainer, None, 1.0, "norm") and clipped == [1.0]
    assert not clip_gradients(trainer, None, 1.0, "value")  # by value: Lightning's plugin does it
    assert not clip_gradients(trainer, None, None, "norm") and clipped == [1.0]


def test_fsdp_two_cpu_processes_train_test_and_export_the_checkpoints_weights(tmp_path) -> None:
    """trainer=fsdp with FULL_SHARD on 2 gloo processes: the ranks train on every row once per epoch (as
    under DDP), test the best checkpoint (Lightning cannot reload a checkpoint into the module it trained
    under FSDP: Lightning-AI/pytorch-lightning#20373, so a fresh module is tested), and rank 0 exports
    exactly the checkpoint's weights with the unsharded parameter counts."""
    run_dir = tmp_path / "fsdp"
    proc = run_script(
        "train.py", "trainer=fsdp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.precision=32-true",
        "trainer.strategy._target_=tests.cpu_fsdp.CpuFSDPStrategy", "trainer.strategy.mixed_precision=null",
        "model=tiny", "logger=csv", f"paths.data_dir={FIXTURES}", "data.train_limit=72", "data.batch_size=8",
        "trainer.max_epochs=1", "plots=false", "+callbacks.rows._target_=tests.ddp_rows.RecordTrainingRows",
        f"hydra.run.dir={run_dir}", env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_every_row_trained_once(run_dir, rows_per_rank=40, repeated=8)
    metrics = read_metrics(run_dir)
    assert metrics["params/total"] == metrics["params/trainable"] > 1_000_000  # whole model, not one shard
    (checkpoint,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    exported = load_file(run_dir / "hf_model" / "model.safetensors")
    assert exported.keys() == {k.removeprefix("model.") for k in weights if k.startswith("model.")}
    assert all(torch.equal(exported[k.removeprefix("model.")], v) for k, v in weights.items() if k.startswith("model."))
    # the FSDP test scored the checkpoint's weights: one process evaluating the same checkpoint agrees
    proc = run_script("eval.py", f"ckpt_path={checkpoint}", "model=tiny", "logger=csv", f"paths.data_dir={FIXTURES}",
                      "trainer=cpu", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = read_metrics(tmp_path / "eval")
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert evaluated["test/acc"] == metrics["test/acc"]
    # rank 0 gathered both ranks' test predictions: one row per test example
    rows = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == len((FIXTURES / "sst2" / "dev.tsv").read_text().splitlines()) - 1
