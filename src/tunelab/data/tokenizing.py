"""How data files are tokenized: the tokenizer (from a local path), the outputs kept, and the cores a fast
tokenizer may use."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import transformers

from tunelab.errors import ConfigError

TOKENIZER_THREADS = "TOKENIZERS_PARALLELISM"  # read by Hugging Face's tokenizers at every batch call


def ids_only(pairs: bool = False) -> dict[str, Any]:
    """Tokenizer options for encode_file: input ids (and a pair's token type ids, where the tokenizer has
    them) only. The collate builds attention masks from the lengths; converting the tokenizer's masks and
    single texts' type ids to Python lists as well took about a quarter of the tokenizer's time on SST-2."""
    return {"return_attention_mask": False, "return_token_type_ids": None if pairs else False}


@contextlib.contextmanager
def all_cores_tokenizing() -> Iterator[None]:
    """A fast tokenizer encodes a batch of texts on every core (Rust threads), unless TOKENIZERS_PARALLELISM
    says no, as the run's environment does (conf/hydra/default.yaml): the DataLoader's forked workers must
    not inherit a tokenizer that uses threads. That holds outside this block: the setting is lifted for
    encoding a file only, so the workers forked later still see it (and tokenizers prints no fork warning)."""
    before = os.environ.get(TOKENIZER_THREADS)
    os.environ[TOKENIZER_THREADS] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[TOKENIZER_THREADS]
        else:
            os.environ[TOKENIZER_THREADS] = before


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"tokenizer not found at {path!r} (offline: only local paths work); "
            "set model.tokenizer / model.name_or_path to a local model directory."
        ) from err


def save_tokenizer(tokenizer: Any, out: Any, max_length: int | None, positions: int | None = None,
                   token_types: bool = True) -> None:
    """save_pretrained with model_max_length where the run cut its inputs (pipelines that truncate, and predict.py
    on a dir away from its run, cut there), never beyond the model's positions (a trained tokenizer says 1e30),
    without token type ids for a model the run fed none (`token_types`: a pipeline would pass zeros, which GPT-2
    adds as a word embedding), and padding on the right, as the run's batches were (a decoder's tokenizer may say
    left). The run's own tokenizer stays as it was."""
    limit, inputs, init = tokenizer.model_max_length, tokenizer.model_input_names, tokenizer.init_kwargs
    side = tokenizer.padding_side
    tokenizer.model_max_length = min(n for n in (limit, positions, max_length) if n)
    tokenizer.padding_side = "right"  # tunelab.data.sampling.Collator pads on the right
    if not token_types and "token_type_ids" in inputs:  # saved from the attribute once it is an init argument
        tokenizer.model_input_names = [n for n in inputs if n != "token_type_ids"]
        tokenizer.init_kwargs = {**init, "model_input_names": tokenizer.model_input_names}
    try:
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.model_max_length, tokenizer.model_input_names, tokenizer.init_kwargs = limit, inputs, init
        tokenizer.padding_side = side


def with_pad_token(tokenizer: Any) -> Any:
    """A tokenizer without a pad token (GPT-2's) pads with its end-of-text token, which no text contains inside it:
    a decoder's sequence head reads the last token before the first pad, and a real token as pad (id 0 is GPT-2's
    '!') would hide the texts' own trailing ones. The loss and metrics never see pads (attention mask, label -100)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
