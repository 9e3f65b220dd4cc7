"""Errors raised for user mistakes: the CLI prints their message and exits non-zero, without a traceback."""

from __future__ import annotations


class AutoLoRAError(Exception):
    """Base class of every error caused by bad input (a path, a file, a value, a reply)."""


class InputFileError(AutoLoRAError):
    """A file or folder is missing, unreadable, corrupt, or of a refused format."""


class IncompatibleLoRAError(AutoLoRAError):
    """A LoRA does not fit the base model it is loaded into."""


class ConfigError(AutoLoRAError):
    """A parameter or configuration value is out of range or malformed."""
