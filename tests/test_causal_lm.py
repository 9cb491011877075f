"""Causal LM: trained tokenizers, packing vs per-document blocks, contiguous splits, the one label
shift, perplexity, the generate callback, loss mismatch errors and learning on real text."""

import csv
import math

import pytest
import torch
import transformers
from hydra.utils import instantiate

from conftest import FIXTURES, compose_cfg
from tunelab.callbacks import GenerateSample
from tunelab.data.language_modeling import document_blocks, pack_blocks, train_tokenizer
from tunelab.losses import NextTokenCrossEntropyLoss, shift_for_next_token
from tunelab.errors import ConfigError
from tunelab.metrics import Perplexity
from tunelab.tasks import get_task

LM = ["data=tiny_shakespeare", "model=gpt2_tiny", "loss=next_token_cross_entropy"]


def datamodule(tmp_path, cache_dir, *overrides):
    cfg = compose_cfg(tmp_path, *LM, *overrides, cache=cache_dir)
    dm = instantiate(cfg.data, tokenizer=cfg.model.tokenizer, seed=cfg.seed, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_packing_yields_zero_padding(tmp_path, cache_dir) -> None:
    packed = datamodule(tmp_path, cache_dir, "data.packing=true", "data.block_size=64", "data.batch_size=8")
    for loader in (packed.train_dataloader(), packed.val_dataloader(), packed.test_dataloader()):
        for batch in loader:
            assert batch["input_ids"].shape[1] == 64
            assert bool(batch["attention_mask"].all()), "packed blocks must not be padded"
            assert bool((batch["labels"] != -100).all())
    unpacked = datamodule(tmp_path, cache_dir, "data.packing=false", "data.block_size=64", "data.batch_size=8")
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in unpacked.train_dataloader())
    assert padding > 0  # per-document blocks: each speech's last block is padded
    # padding is masked out of the loss and the metrics
    batch = next(iter(unpacked.train_dataloader()))
    assert bool(((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all())


def test_block_helpers() -> None:
    docs = [[1, 2, 3], [4, 5], [6]]
    assert pack_blocks(docs, 0, 3) == [[1, 2, 3], [0, 4, 5], [0, 6, 0]]
    assert document_blocks(docs, 0, 2) == [[1, 2], [3, 0], [4, 5], [6, 0]]  # [0] alone would predict nothing


def test_splits_are_contiguous_ranges_of_the_stream(tmp_path, cache_dir) -> None:
    dm = datamodule(tmp_path, cache_dir, "data.block_size=32")
    sizes = {s: sum(len(e["input_ids"]) for e in d.examples) for s, d in dm.splits.items()}
    total = sum(sizes.values())
    assert sizes["val"] / total == pytest.approx(0.05, abs=0.01)
    assert sizes["test"] / total == pytest.approx(0.05, abs=0.01)
    # train + val + test, in that order, is the original stream
    stream = [t for s in ("train", "val", "test") for e in dm.splits[s].examples for t in e["input_ids"]]
    text = dm.tokenizer.decode(stream)
    assert text.startswith("First Citizen:\nBefore we proceed")


def test_char_tokenizer_round_trips_and_is_saved_for_transformers(tmp_path, cache_dir) -> None:
    dm = datamodule(tmp_path, cache_dir)
    tok = dm.tokenizer
    text = "ROMEO:\nWhat, art thou here?"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok(text)["input_ids"]) == len(text)
    assert dm.vocab_size == len(tok) and tok.eos_token == tok.pad_token == "<|endoftext|>"
    reloaded = transformers.AutoTokenizer.from_pretrained(dm.tokenizer_dir("char"))
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert tok("\u00e9")["input_ids"] == [tok.unk_token_id]  # a character the training text lacks


def test_byte_bpe_tokenizer() -> None:
    tok = train_tokenizer("byte_bpe:300", (FIXTURES / "lm" / "input.txt").read_text())
    text = "KING RICHARD III: caf\u00e9"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte level: nothing is unknown
    assert len(tok) <= 301


def test_label_shift_lives_in_one_place() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[1, 3:] = -100
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert NextTokenCrossEntropyLoss()(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    preds, targets = get_task("causal_lm").metric_inputs(logits, labels)
    assert torch.equal(targets, shift_for_next_token(logits, labels)[1])
    # perplexity = exp of the token-weighted mean NLL over the epoch (not a mean of batch perplexities)
    ppl = Perplexity()
    ppl.update(preds[:1], targets[:1])
    ppl.update(preds[1:], targets[1:])
    assert ppl.compute().item() == pytest.approx(math.exp(expected.item()), rel=1e-5)


def test_generate_sample_leaves_the_training_rng_alone(tmp_path, cache_dir) -> None:
    from tunelab.pipeline import module_kwargs
    from tunelab.module import TransformerModule

    cfg = compose_cfg(tmp_path, *LM, cache=cache_dir)
    dm = datamodule(tmp_path, cache_dir)
    module = TransformerModule(**module_kwargs(cfg, dm))
    callback = GenerateSample(prompt="ROMEO:", max_new_tokens=8)
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    text = callback.generate(module, dm.tokenizer)
    assert torch.equal(state, torch.random.get_rng_state())
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
    assert module.model.training  # mode restored


@pytest.mark.parametrize("optimizer", ["sgd", "adamax"])  # adamw, adafactor: test_token_classification.py
def test_next_token_fast_dev_run(run_cfg, optimizer: str) -> None:
    metrics, _ = run_cfg(*LM, f"optimizer={optimizer}", "trainer=debug", "data.block_size=32", "data.batch_size=8",
                         "callbacks=generate", "callbacks.progress_bar=null", "callbacks.model_summary=null")
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["test/perplexity"])


def test_the_epoch_loss_is_the_token_mean_whatever_the_blocks_lengths(run_cfg) -> None:
    """Per-document blocks (data.packing=false) differ in length: the epoch loss weights each batch by the
    tokens it scores, so test/loss is the log of test/perplexity (a mean over rows gave 3.2751 for 3.2709)."""
    metrics, _ = run_cfg(*LM, "data.packing=false", "data.block_size=32", "data.batch_size=4", "trainer.max_epochs=1",
                         "data.eval_batch_size=3")
    assert metrics["test/loss"] == pytest.approx(math.log(metrics["test/perplexity"]), rel=1e-6)
    assert metrics["val/loss"] == pytest.approx(math.log(metrics["val/perplexity"]), rel=1e-6)


def test_lm_loss_falls_on_real_text(run_cfg) -> None:
    """gpt2_tiny on 40 kB of tiny-shakespeare, 3 epochs (51 steps): the training loss falls from its
    untrained value (~ln 67, the characters of the vocabulary) and val perplexity ends far below 67."""
    metrics, run_dir = run_cfg(*LM, "data.block_size=64", "data.batch_size=32", "trainer.max_epochs=3",
                               "optimizer.lr=2e-3", "scheduler=cosine", "scheduler.warmup_steps=5",
                               "trainer.log_every_n_steps=1")
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert losses[0] > 3.9 and sum(losses[-5:]) / 5 < losses[0] - 0.8, losses
    assert metrics["val/perplexity"] < 30, metrics


@pytest.mark.slow
def test_shakespeare_experiment_lowers_perplexity(run_cfg) -> None:
    from conftest import SHARED_DATA

    metrics, _ = run_cfg("experiment=shakespeare", "model=gpt2_tiny", f"paths.data_dir={SHARED_DATA}",
                         "callbacks.progress_bar=null")
    assert metrics["val/perplexity"] < 15, metrics  # untrained: 67.6 (README)


@pytest.mark.parametrize("adapter", [[], ["peft=lora", "peft.merge_on_save=true"]], ids=["full", "merged_lora"])
def test_the_exported_lm_stops_at_its_tokenizers_end_of_text(run_cfg, adapter) -> None:
    """gpt2_tiny with a character tokenizer trained here: the exported config (hf_model, or the merged LoRA model)
    carries that tokenizer's eos id (GPT-2's 50256 lies beyond its vocabulary of characters, so generate() never
    stopped), and the tokenizer cuts inputs at the training block size, within the model's positions (it said 1e30:
    a long prompt crashed)."""
    import transformers

    _, run_dir = run_cfg(*LM, "trainer=debug", "data.block_size=32", "data.batch_size=8", "export=true", *adapter)
    out = run_dir / ("merged" if adapter else "hf_model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.eos_token_id == tokenizer.eos_token_id < len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == 32 <= model.config.n_positions


def test_text_shorter_than_one_packed_block_names_block_size(tmp_path, cache_dir) -> None:
    """Packed text shorter than one block gives no block: the fix is the block size, not the file."""
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.\n\nThat is the question.\n")
    with pytest.raises(ConfigError, match=r"or a smaller data.block_size \(now 256\) or data.packing=false\.$"):
        datamodule(tmp_path, cache_dir, "data=text", f"data.train_file={short}", "data.packing=true",
                   "data.block_size=256", "data.batch_size=1")
