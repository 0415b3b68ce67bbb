"""Errors the CLI turns into a one-line message instead of a traceback."""


class BpoRayError(Exception):
    """Base for errors caused by the user's input or settings, not by a bug."""


class ConfigError(BpoRayError):
    """A setting is missing or invalid; the message names it."""


class InputError(BpoRayError):
    """An input file cannot be read; the message names the file (and row/field when known)."""


class ModelUnavailableError(ConfigError):
    """The model cannot serve this job at all: missing or unloadable weights, an unknown
    provider, a rejected key (401/403), an unknown model (404), an API that never answers.

    Raised from inside stage actors too: it stops the job instead of turning every row into a
    rejected one, so no row is marked as failed for good because of a setting.
    """
