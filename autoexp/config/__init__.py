"""Typed schemas of the config groups and the checks run before a job starts."""

from autoexp.config.validation import ConfigError, validate_config

__all__ = ["ConfigError", "validate_config"]
