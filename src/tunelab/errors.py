"""User-facing configuration errors: one line that names the fix, raised before training starts."""


class ConfigError(ValueError):
    """A configuration or input problem the user can fix; the message says how."""
