"""Model loading: what build_model hands to the trainer, whatever the checkpoint on disk."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers

from conftest import save_tiny_model
from tunelab.model import build_model
from tunelab.tasks import get_task


def test_half_precision_checkpoint_loads_with_fp32_master_weights(tmp_path) -> None:
    # transformers 5 loads dtype="auto": an fp16 checkpoint would train in pure fp16 (AdamW on fp16
    # weights overflowed to NaN at step 1 with the fp16 copy of MiniLM)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, num_labels=2)
    transformers.BertForSequenceClassification(config).half().save_pretrained(tmp_path)
    model = build_model({"name_or_path": str(tmp_path)}, get_task("classification"), num_labels=2)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.training


TINY_BERT = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 32}


def graphs_for_lengths(lengths: list[int], batch_size: int = 2, **compile_cfg) -> int:
    """Graphs dynamo traces for a tiny compiled BERT trained one step at each sequence length."""
    torch._dynamo.reset()
    model = build_model({"name_or_path": None, "from_scratch": True, "compile": True, "config": TINY_BERT,
                         **compile_cfg}, get_task("classification"), num_labels=2)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # reset() keeps earlier tests' counts
    for length in lengths:
        ids = torch.randint(0, 64, (batch_size, length))
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    torch._dynamo.reset()
    return graphs


def test_static_compile_keeps_one_graph_per_length_bucket_beyond_dynamos_default_limit() -> None:
    # compile_dynamic=false specialises a graph per shape; with dynamo's default limit (8) the 9th
    # length would silently run eager again
    lengths = [16 * k for k in range(1, 11)]  # 10 buckets of pad_to_multiple_of=16
    assert graphs_for_lengths(lengths, compile_dynamic=False, compile_backend="eager") == len(lengths)


def test_cudagraphs_backend_traces_one_static_graph_per_length() -> None:
    # the backend replays its first recording on every later shape (pytorch#131009): with compile_dynamic
    # left null, dynamo would make the second length dynamic and share one graph between lengths
    assert graphs_for_lengths([16, 32, 48], compile_dynamic=None, compile_backend="cudagraphs") == 3


def test_dynamic_compile_keeps_one_graph_when_the_first_length_equals_the_batch_size() -> None:
    # dynamo's duck shaping gave both dims of a 16 x 16 batch one symbol: the next length recompiled the
    # whole model: 26 s more for MiniLM on an H200, in 12% of experiment=stsb_minilm_gpu's seeds (batch 16,
    # a 16-token first batch) and 1% of sst2_minilm_gpu's (batch 64)
    assert graphs_for_lengths([16, 32, 48], batch_size=16, compile_dynamic=True, compile_backend="aot_eager") == 1


def test_dynamic_compile_traces_the_step_once() -> None:
    # with the model's float attributes traced as symbols, dynamo traced the step and built its joint
    # graph, then restarted specialised: that first pass was half of a warm run's compile time
    import logging

    restarts: list[str] = []

    class Restarts(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Restarting analysis" in record.getMessage():
                restarts.append(record.getMessage())

    logger = logging.getLogger("torch._dynamo.convert_frame")
    handler, level = Restarts(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert graphs_for_lengths([16, 32], compile_dynamic=True, compile_backend="aot_eager") == 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert restarts == []


def test_layer_scope_compiles_one_graph_for_every_layer_and_trains_as_eager() -> None:
    # regional compilation: the layers are one module class with the same shapes, so dynamo traces one
    # graph for all of them (the cold compile of one layer, not of the model); names and numbers unchanged
    config = {**TINY_BERT, "num_hidden_layers": 3}
    assert graphs_for_lengths([16, 32], compile_dynamic=True, compile_backend="aot_eager", compile_scope="layers",
                              config=config) == 1

    def trained(compile_cfg: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_model({"name_or_path": None, "from_scratch": True, "config": config, **compile_cfg},
                            get_task("classification"), num_labels=2)
        model.eval()  # no dropout: the two paths draw no random masks to compare
        if compile_cfg:  # nn.Module.compile sets _compiled_call_impl: the layers, not the model around them
            compiled = {name for name, m in model.named_modules() if m._compiled_call_impl is not None}
            assert compiled == {f"bert.encoder.layer.{i}" for i in range(3)}
        ids = torch.randint(0, 64, (4, 16))
        mask = (torch.arange(16) < torch.tensor([[16], [12], [7], [3]])).long()  # padded rows: a mask in the layers
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits.sum().backward()
        return logits, {n: p.grad for n, p in model.named_parameters()}

    eager_logits, eager_grads = trained({})
    logits, grads = trained({"compile": True, "compile_dynamic": True, "compile_backend": "aot_eager",
                             "compile_scope": "layers"})
    torch._dynamo.reset()
    assert grads.keys() == eager_grads.keys()  # parameter names, hence checkpoints, as the eager model's
    torch.testing.assert_close(logits, eager_logits)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], msg=name)


def test_compile_cache_dir_serves_the_next_compile_from_disk(tmp_path, monkeypatch) -> None:
    """model.compile_cache_dir holds inductor's compiled graphs: after the in-process caches are
    dropped (a new run, a sweep's next job), the same graph loads from that dir instead of compiling."""
    from torch._dynamo.utils import counters

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    cache = tmp_path / "inductor"
    build_model({"name_or_path": None, "from_scratch": True, "compile": True, "compile_backend": "eager",
                 "compile_cache_dir": str(cache),
                 "config": TINY_BERT},
                get_task("classification"), num_labels=2)
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == cache.resolve()

    def compile_fwd_bwd() -> dict[str, int]:
        torch._dynamo.reset()
        counters.clear()
        x = torch.randn(4, 8, requires_grad=True)
        torch.compile(lambda t: torch.nn.functional.gelu(t * 3).sum())(x).backward()
        return {**counters["inductor"], **counters["aot_autograd"]}

    cold = compile_fwd_bwd()
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and not cold.get("fxgraph_cache_hit")
    assert any(cache.rglob("*.py")), "compiled code must land in model.compile_cache_dir"
    warm = compile_fwd_bwd()
    assert warm.get("fxgraph_cache_hit", 0) >= 1 and not warm.get("fxgraph_cache_miss"), warm
    assert warm.get("autograd_cache_hit", 0) >= 1
    torch._dynamo.reset()


def test_cuda_graph_settings_mark_each_step() -> None:
    # inductor's reduce-overhead / max-autotune and the cudagraphs backend replay CUDA graphs: the module
    # marks each step (cudagraph_mark_step_begin) so a replay may reuse the last one's output memory
    from tunelab.compiling import uses_cuda_graphs

    assert uses_cuda_graphs({"compile": True, "compile_mode": "reduce-overhead"})
    assert uses_cuda_graphs({"compile": True, "compile_backend": "cudagraphs", "compile_mode": None})
    assert not uses_cuda_graphs({"compile": True, "compile_backend": "inductor", "compile_mode": None})
    assert not uses_cuda_graphs({"compile": False, "compile_backend": "cudagraphs"})


def test_a_decoder_head_pools_each_texts_last_real_token_whatever_its_configs_pad_id(tmp_path) -> None:
    """A decoder's sequence head takes the last token before the first pad id: config.json's pad id (2, set for
    another tokenizer) gives way to the batches' (0), so a text scores the same alone or beside a longer one."""
    config = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=2)
    model = build_model({"name_or_path": str(save_tiny_model(tmp_path, config))}, get_task("classification"), 2,
                        pad_token_id=0).eval()
    assert model.config.pad_token_id == 0
    short, longer = [101, 2307, 3185, 102], [101, 2307, 3185, 2001, 2307, 102]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([short])).logits[0]
        batch = model(input_ids=torch.tensor([short + [0, 0], longer]),
                      attention_mask=torch.tensor([[1] * 4 + [0, 0], [1] * 6])).logits[0]
    torch.testing.assert_close(alone, batch, atol=1e-5, rtol=1e-4)


def test_text_pairs_on_a_model_without_token_types_train_and_export_without_them(tmp_path, run_cfg) -> None:
    """RoBERTa's type embedding has one row: a pair's second-segment ids (1) are not fed to it (an IndexError
    mid-run), and its exported tokenizer makes none, so a pipeline feeds the model what the run did."""
    from conftest import FIXTURES

    config = transformers.RobertaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, type_vocab_size=1)
    path = save_tiny_model(tmp_path / "roberta", config)
    metrics, run_dir = run_cfg("model=hf", f"model.name_or_path={path}", "data=stsb", "loss=mse", "trainer=debug",
                               f"paths.data_dir={FIXTURES}")
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))
    exported = transformers.AutoTokenizer.from_pretrained(run_dir / "hf_model")
    assert "token_type_ids" not in exported("a pair", "of texts")


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_of_text(tmp_path) -> None:
    """GPT-2's tokenizer has no pad token; id 0 is its '!'. Padding with 0 would make a decoder's sequence head
    take every text-final '!' for padding: batches are padded with the end-of-text token instead."""
    from tunelab.data import TextDataModule

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        save_tiny_model(tmp_path, transformers.BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1,
                                                          num_attention_heads=1, intermediate_size=8)))
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"  # as GPT-2's: an end-of-text token, no pad token
    tokenizer.save_pretrained(tmp_path / "no_pad")
    dm = TextDataModule(tokenizer=str(tmp_path / "no_pad"), name="t", task="classification", train_file="unused")
    assert dm.pad_token_id == tokenizer.eos_token_id != 0


def test_a_tokenizer_with_more_ids_than_the_model_embeds_is_one_line(tmp_path, run_cfg) -> None:
    """A model dir whose tokenizer is another model's (30522 ids for 1000 embeddings): an IndexError mid-run else."""
    import pytest

    from tunelab.errors import ConfigError

    small = save_tiny_model(tmp_path, transformers.RobertaConfig(vocab_size=1000, hidden_size=8, num_hidden_layers=1,
                                                                 num_attention_heads=1, intermediate_size=8))
    with pytest.raises(ConfigError) as err:
        run_cfg("model=hf", f"model.name_or_path={small}", "trainer=debug")
    assert str(err.value) == ("the tokenizer has 30522 tokens but the model embeds 1000 (config.vocab_size): use the "
                              "model's own tokenizer (model.tokenizer=null).")


def test_an_exported_tokenizer_pads_on_the_right_as_the_run_did(tmp_path) -> None:
    """A decoder's tokenizer may pad on the left; the run's batches were padded on the right (the Collator), and a
    batched pipeline over the export must pad as they were."""
    from tunelab.data.tokenizing import save_tokenizer
    from tunelab.resolvers import minilm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path(), padding_side="left")
    save_tokenizer(tokenizer, tmp_path, max_length=16)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path).padding_side == "right"
    assert tokenizer.padding_side == "left"  # the run's own is left as it was


def test_model_dropout_reaches_attention_without_dropout_modules(tmp_path) -> None:
    """Llama's attention applies config.attention_dropout functionally (no nn.Dropout to set): model.dropout sets
    the config's rates before the model is built."""
    config = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    model = build_model({"name_or_path": str(save_tiny_model(tmp_path, config)), "dropout": 0.3},
                        get_task("classification"), 2, pad_token_id=0)
    assert model.model.layers[0].self_attn.attention_dropout == 0.3


def test_a_model_dir_without_weights_is_one_line_naming_from_scratch(tmp_path) -> None:
    import pytest

    from tunelab.errors import ConfigError

    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"^no weights to load at .*; set model.from_scratch=true to train this "):
        build_model({"name_or_path": str(tmp_path)}, get_task("classification"), 2)


def test_a_checkpoint_names_its_model_by_absolute_path(run_cfg, pretrained_tiny_bert) -> None:
    """model.name_or_path given relative to where train.py ran: eval.py run elsewhere must still find it."""
    import json

    relative = os.path.relpath(pretrained_tiny_bert)
    _, run_dir = run_cfg("model=hf", f"model.name_or_path={relative}", "trainer.max_steps=2", "data.train_limit=16",
                         "data.batch_size=8")
    checkpoint = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"] or str(
        run_dir / "checkpoints" / "last.ckpt")
    model = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]["model"]
    assert model["name_or_path"] == str(Path(pretrained_tiny_bert).resolve())


def test_a_model_dir_with_its_own_code_runs_it_only_when_asked(tmp_path) -> None:
    """An architecture of the user's own (config.json auto_map -> code in the dir): without
    model.trust_remote_code=true, one line naming it; transformers would ask [y/N] on a terminal and hold a sweep."""
    import json

    import pytest

    from tunelab.errors import ConfigError
    from tunelab.model import model_config

    (tmp_path / "configuration_mybert.py").write_text(
        "from transformers import BertConfig\n\nclass MyBertConfig(BertConfig):\n    model_type = 'mybert'\n")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "mybert", "auto_map": {"AutoConfig": "configuration_mybert.MyBertConfig"}, "hidden_size": 8}))
    with pytest.raises(ConfigError) as err:
        model_config({"name_or_path": str(tmp_path)})
    assert str(err.value) == (f"{tmp_path} ships its own model code (config.json auto_map): pass "
                              "model.trust_remote_code=true to run it.")
    assert model_config({"name_or_path": str(tmp_path), "trust_remote_code": True}).model_type == "mybert"


def test_freeze_layers_beyond_albert_shared_layer_group_says_they_are_shared(tmp_path) -> None:
    import pytest

    from tunelab.errors import ConfigError

    config = transformers.AlbertConfig(vocab_size=30522, embedding_size=8, hidden_size=8, num_hidden_layers=2,
                                       num_attention_heads=1, intermediate_size=8)
    with pytest.raises(ConfigError) as err:
        build_model({"name_or_path": str(save_tiny_model(tmp_path, config)), "freeze_layers": 2},
                    get_task("classification"), 2)
    assert str(err.value) == ("model.freeze_layers=2 but the model has 1 layers (its 2 layers share the weights of 1, "
                              "as ALBERT's do); use at most 1.")
