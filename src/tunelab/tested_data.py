"""What a trained model is tested and predicts on: the data config, input lengths and splits of the run that trained
it (eval.py / predict.py without data=), read from that run's dir."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Collection

from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab.checkpoints import training_config
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)


def chooses_data(given_keys: Collection[str]) -> bool:
    """Whether an eval.py / predict.py command line chooses the data (`data=`, `experiment=`); else the trained
    run's data config is used (use_trained_data), and ckpt_path=last takes the newest run of any task."""
    return bool({"data", "experiment"} & set(given_keys))


def use_trained_data(path: str | Path, cfg: DictConfig, given_keys: Collection[str] = ()) -> None:
    """eval.py / predict.py on a checkpoint or exported model whose run dir is at hand, with no data option on the
    command line (`data=`, `experiment=`): the data config that run trained with (its files, columns, labels,
    lengths, splits), resolved with its paths but the command line's paths.* keys, with this machine's loader
    settings and the command line's data.* keys on top. A model trained on one's own CSV is tested on its held-out
    rows by `eval.py ckpt_path=...` alone."""
    from tunelab.data.datamodule import LOADER_KEYS  # (lightning: not imported before a run starts)

    trained_cfg = training_config(path)
    if chooses_data(given_keys) or trained_cfg is None or not OmegaConf.select(trained_cfg, "data._target_"):
        return
    for key in sorted(k for k in given_keys if k.startswith("paths.")):  # eval.py paths.data_dir=<the data now>
        OmegaConf.update(trained_cfg, key, OmegaConf.select(cfg, key), force_add=True)
    try:
        trained = OmegaConf.create(OmegaConf.to_container(trained_cfg.data, resolve=True))
    except Exception as err:  # noqa: BLE001 - testing the default data instead would report a wrong result
        why = re.sub(r'^\w+ raised while resolving interpolation: "?(.*?)"?$', r"\1", str(err).splitlines()[0])
        raise ConfigError(f"ckpt_path={path}: the data config its run trained with does not resolve here ({why}): "
                          "pass what it reads, or data=... for the data to test on.") from None
    keys = [f"data.{k}" for k in LOADER_KEYS if k in cfg.data] + [k for k in given_keys if k.startswith("data.")]
    for key in sorted(set(keys)):
        OmegaConf.update(trained, key.removeprefix("data."), OmegaConf.select(cfg, key), force_add=True)
    if trained.get("name") != cfg.data.get("name"):
        log.info("data=%s as ckpt_path=%s was trained (pass data=... to test on other data)", trained.get("name"), path)
    with open_dict(cfg):
        cfg.data = trained


# how a model's inputs were cut: a checkpoint is tested (and predicts) with its training run's, not the data
# config's defaults (conf/data/conll2003.yaml says 128 where experiment=conll2003 trained at 64)
INPUT_LENGTHS = ("data.max_length", "data.block_size")


def input_length(cfg: DictConfig) -> int | None:
    """Where this run cuts its inputs: data.max_length, or data.block_size for causal LM text."""
    return next((v for v in (OmegaConf.select(cfg, k, default=None) for k in INPUT_LENGTHS) if v), None)


# how the training file was split and cut into examples: a checkpoint tested on the split carved from its training
# file gets the test rows (or text blocks) its run held out, not rows it trained on (a val_file of its own changes
# what is carved too)
SPLIT_SETTINGS = ("data.val_file", "data.split_seed", "data.val_fraction", "data.test_fraction", "data.packing",
                  "data.document_separator")


def use_trained_data_settings(path: str | Path, cfg: DictConfig, given_keys: Collection[str] = ()) -> None:
    """Set cfg's INPUT_LENGTHS and SPLIT_SETTINGS to those of the run that wrote `path` (its .hydra/config.yaml),
    except the keys the command line gives (`given_keys`), logging each one that changes."""
    trained_cfg = training_config(path)
    if trained_cfg is None:
        _use_exported_length(path, cfg, given_keys)
        return
    absent = object()  # a key the data config lacks, unlike one set to null (data.val_file=null: carve it)
    for key in (*INPUT_LENGTHS, *SPLIT_SETTINGS):
        trained = OmegaConf.select(trained_cfg, key, default=absent)
        now = OmegaConf.select(cfg, key, default=absent)
        if key in given_keys or trained is absent or now is absent or trained == now:
            continue
        OmegaConf.update(cfg, key, trained)
        log.info("%s=%s as ckpt_path=%s was trained (the data config says %s; pass %s=... to test otherwise)",
                 key, trained, path, now, key)


def _use_exported_length(path: str | Path, cfg: DictConfig, given_keys: Collection[str]) -> None:
    """An exported model dir away from its run (no .hydra beside it): its tokenizer's model_max_length is where its
    run cut inputs (export writes it), an upper bound for the data config's length."""
    tokenizer_file = Path(path) / "tokenizer_config.json"
    if not tokenizer_file.is_file():
        return
    exported = json.loads(tokenizer_file.read_text()).get("model_max_length")
    for key in INPUT_LENGTHS:
        now = OmegaConf.select(cfg, key, default=None)
        if key in given_keys or now is None or not isinstance(exported, int) or exported >= now:
            continue
        OmegaConf.update(cfg, key, exported)
        log.info("%s=%s, where the tokenizer of %s cuts inputs (the data config says %s)", key, exported, path, now)


def check_text_pairs(path: str | Path, data: DictConfig) -> None:
    """A model trained on text pairs scores single texts without complaint, and the reverse: when the
    training run's config is at hand, the data config must give pairs exactly when it did."""
    trained_cfg = training_config(path)
    if trained_cfg is None:
        return  # nothing to check against
    trained = OmegaConf.select(trained_cfg, "data.text_pair_column", throw_on_missing=False)
    given = data.get("text_pair_column")
    if trained and not given:
        raise ConfigError(f"ckpt_path={path} was trained on text pairs (data.text_pair_column={trained}); pass "
                          "data.text_pair_column=<the second text's column>.")
    if given and not trained:
        raise ConfigError(f"ckpt_path={path} was trained on single texts; drop data.text_pair_column={given}.")
