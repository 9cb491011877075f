"""What predict.py runs: a trained model (a .ckpt, or an exported hf_model / merged dir) over the unlabelled
rows of data.predict_file (the data config's text columns; CoNLL: tokens only), writing predictions.jsonl
(the test predictions' fields without gold) into the run dir and a one-line summary."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from tunelab import export, predictions, rundir, sweeps
from tunelab.checkpoints import check_checkpoint, tested_label_info, trained_tokenizer
from tunelab.errors import ConfigError
from tunelab.module import TransformerModule
from tunelab.run_layout import PREDICTIONS_FILE
from tunelab.tasks import TASKS, get_task
from tunelab.tested_data import check_text_pairs, use_trained_data_settings
from tunelab.trainer import build_trainer

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    # every user error before any work: the task, the model against the data config (config.json or the
    # checkpoint's header), then the rows of data.predict_file; only then the weights and the Trainer
    task = get_task(cfg.data.task)
    if not task.writes_predictions():
        writers = sorted(t.name for t in TASKS.values() if t.writes_predictions())
        raise ConfigError(f"data.task={task.name} has no per-example predictions; predict.py takes a model of one of "
                          f"the tasks {', '.join(writers)}.")
    path, tokenizer, trained = checked_model(cfg)
    check_text_pairs(path, cfg.data)
    use_trained_data_settings(path, cfg, sweeps.command_line_keys())  # words past the training length get null
    # only the file to predict on: label names and tokenizer come with the trained model
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed, train_file=None, val_file=None,
                             test_file=None, _recursive_=False)
    datamodule.setup("predict")  # reads, checks and tokenizes the rows; trainer.predict reuses them
    module = load(path, cfg, trained)
    trainer = build_trainer(cfg)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        rows = predictions.write(out, module, datamodule.splits["predict"].examples)
        print(summary(rows, out / PREDICTIONS_FILE, cfg.data.predict_file), flush=True)
    return {}


def checked_model(cfg: DictConfig) -> tuple[str, str, dict | None]:
    """The model to predict with (an exported dir or a .ckpt), its tokenizer and (a .ckpt's) hyper-parameters,
    after checking that it fits the data config's task and label set; no weights are loaded."""
    if export.is_model_dir(cfg.ckpt_path):
        export.check_model_dir(cfg.ckpt_path, cfg)
        return str(cfg.ckpt_path), str(cfg.ckpt_path), None
    path = rundir.resolve_ckpt_path(cfg)
    if Path(path).is_dir():  # an adapter dir: its base model and label names are the training run's config
        raise ConfigError(f"ckpt_path={path} is an adapter; predict with the run's checkpoint (.ckpt) or its merged "
                          "model (peft.merge_on_save=true).")
    trained = check_checkpoint(path, cfg, sweeps.command_line_keys())  # its hyper-parameters, read once
    return path, trained_tokenizer(trained), trained


def load(path: str, cfg: DictConfig, trained: dict | None) -> TransformerModule:
    """The module to predict with: around an exported dir, or a checkpoint's hyper-parameters and weights."""
    if export.is_model_dir(path):
        return export.load_module(path, cfg)
    label_info = tested_label_info(trained.get("label_info"), cfg.data)
    return TransformerModule.load_from_checkpoint(path, map_location="cpu", label_info=label_info,
                                                  model=trained["model"])


def summary(rows: list[dict], path: Path, source: str) -> str:
    """One line: how many rows were predicted, where they went, and the predicted labels' counts."""
    # a label per row, or per word (NER: entity tags, null for words past max_length)
    preds = Counter(p for r in rows for p in (r["pred"] if isinstance(r["pred"], list) else [r["pred"]])
                    if isinstance(p, str))
    counts = f" ({', '.join(f'{label} {n}' for label, n in preds.most_common())})" if preds else ""
    return f"predicted {len(rows)} rows of {source}{counts}: {path}"
