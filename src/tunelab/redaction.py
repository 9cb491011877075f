"""Secrets kept out of what trackers receive (config, run names, the command line in W&B's run metadata):
config values under secret-looking keys, and the W&B key from the environment wherever it appears."""

from __future__ import annotations

import os
import re
from typing import Any

# a leaf key that names a secret: `token`, `hf_token`, `api_key`, `client_secret`, `db_password`; not `tokenizer`,
# `token_column`, `max_new_tokens` or `num_virtual_tokens`, whose values a run is compared by
SECRET_KEY = re.compile(r"(?:.*[_-])?(api[_-]?key|secret[_-]?key|access[_-]?key|token|secret|password|passwd)",
                        re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """Whether a config key (dotted or not, `+`/`~` prefixes allowed) names a secret, by its last part."""
    return SECRET_KEY.fullmatch(key.lstrip("+~").rsplit(".", 1)[-1]) is not None


def redact_secrets(value: Any, key: str = "") -> Any:
    """Config values under secret-looking keys, and the W&B key from the environment, become ***."""
    if isinstance(value, dict):
        return {k: redact_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v, key) for v in value]
    env_key = os.environ.get("WANDB_API_KEY")
    if is_secret_key(key) and value not in (None, ""):
        return "***"
    if env_key and isinstance(value, str) and env_key in value:
        return value.replace(env_key, "***")
    return value


def redact_argument(argument: str) -> str:
    """A command-line override with its value redacted as redact_secrets does (`+model.token=***`)."""
    key, equals, value = argument.partition("=")
    return f"{key}={redact_secrets(value, key)}" if equals else argument
