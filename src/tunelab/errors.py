"""What ends a run early, as one line for the user: configuration errors (raised before training starts),
training errors, and a stop signal."""


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message says how."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and what to change."""


class RunInterrupted(Exception):
    """A stop signal (SIGTERM, SIGINT, SIGUSR2) ended training after a step and wrote last.ckpt. The process exits
    128 + the signal's number, as a shell reports a signalled command: `train.py && eval.py` must not go on with
    half a run."""

    def __init__(self, signum: int, checkpoint: str, sweep_dir: str | None = None) -> None:
        # a sweep resumes as a whole: every job from its own last.ckpt, the jobs that never started from scratch
        how = (f"run the sweep command again with hydra.sweep.dir={sweep_dir} ckpt_path=last" if sweep_dir
               else f"resume with ckpt_path={checkpoint}")
        super().__init__(f"interrupted: {how}")
        self.signum = signum
        self.checkpoint = checkpoint


class SweepRefused(BaseException):
    """A ConfigError found in a sweep's jobs before the first one runs. A BaseException because Hydra's
    callback runner turns every Exception of a callback into a warning and carries on with the sweep."""
