"""User-facing configuration errors: one line that names the fix, raised before training starts."""


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message says how."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and what to change."""
