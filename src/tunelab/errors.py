"""What ends a run early, as one line for the user: configuration errors (raised before training starts),
training errors, and a stop signal."""


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message says how."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and what to change."""


class RunInterrupted(Exception):
    """SIGTERM / SIGINT stopped training after a step and wrote last.ckpt. The process exits 128 + the signal's
    number, as a shell reports a signalled command: `train.py && eval.py` must not go on with half a run."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"interrupted: resume with ckpt_path={checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint
