"""Reading predictions.jsonl back (tunelab.predictions writes it): what comparisons over test examples
(tunelab.compare, W&B tables) read, and the check that two runs tested the same examples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.data.readers import read_table
from tunelab.errors import ConfigError
from tunelab.run_layout import PREDICTIONS_FILE

if TYPE_CHECKING:
    from tunelab.results import Run


def load_predictions(run_dir: Path) -> list[dict]:
    """The run's per-example predictions (predictions.jsonl of a test or predict.py run), ordered by `index`;
    ConfigError (naming file:line for a broken line) when the file is missing or a record has no `index`.
    The one reader of the file tunelab.predictions writes."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise ConfigError(f"no {PREDICTIONS_FILE} in {run_dir}: test the run again (python eval.py "
                          f"ckpt_path=<its checkpoint>) or leave it out.")
    records, lines = read_table(path, "jsonl")
    for record, line in zip(records, lines):
        if not isinstance(record.get("index"), int):
            raise ConfigError(f"{path}:{line}: a prediction without an integer `index`; re-test the run.")
    return sorted(records, key=lambda r: r["index"])


def check_same_test_set(reference: tuple[Run, list[dict]], other: tuple[Run, list[dict]]) -> None:
    """Both runs predicted the same examples of the same file, with the same gold answers."""
    (ref_run, ref), (run, records) = reference, other
    indices = [r["index"] for r in records]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"{run.dir}/{PREDICTIONS_FILE} lists a test example twice; re-test the run.")
    files, ref_files = _files(records), _files(ref)
    same = "compare runs tested on the same test set."
    if files != ref_files:
        raise ConfigError(f"{run.dir} was tested on {', '.join(sorted(files))} but {ref_run.dir} on "
                          f"{', '.join(sorted(ref_files))}; {same}")
    if indices != [r["index"] for r in ref]:
        raise ConfigError(f"{run.dir} has predictions for {len(indices)} test examples, {ref_run.dir} for {len(ref)} "
                          f"(other row indices); {same}")
    for a, b in zip(records, ref):
        if a.get("gold") != b.get("gold"):
            raise ConfigError(f"{run.dir} and {ref_run.dir} disagree on the gold answer of test example "
                              f"{a['index']}; {same}")


def _files(records: list[dict]) -> set[str]:
    return {os.path.realpath(str(r.get("file"))) for r in records}
