"""Errors the CLI turns into a one-line message instead of a traceback."""


class BpoRayError(Exception):
    """Base for errors caused by the user's input or settings, not by a bug."""


class ConfigError(BpoRayError):
    """A setting is missing or invalid; the message names it."""


class InputError(BpoRayError):
    """An input file cannot be read; the message names the file (and row/field when known)."""
