"""Domain errors: failures caused by input, files or configuration, as opposed to bugs.

Every error a user can cause (a missing file, a malformed CSV, a config key that does not exist, an output that
would be overwritten, a checkpoint of the wrong kind) is a :class:`DcaseError`. Its message names the file, the
row or key, and what to do. The command line prints such an error as one line and exits with status 2; any other
exception is a bug and keeps its traceback.

The subclasses also derive from the matching built-in exception (``ValueError``, ``FileNotFoundError``,
``FileExistsError``), so callers that catch the built-in keep working.
"""

from __future__ import annotations


class DcaseError(Exception):
    """Base class of every error caused by input, files or configuration (not by a bug)."""


class InputError(DcaseError, ValueError):
    """Input content or an argument value is unusable: a bad value, a malformed file, an inconsistent setting."""


class MissingInputError(DcaseError, FileNotFoundError):
    """A file or folder that is read does not exist."""


class OutputExistsError(DcaseError, FileExistsError):
    """An output exists and would be replaced; pass ``--overwrite`` (``overwrite=True``) to replace it."""


class CheckpointError(DcaseError, ValueError):
    """A checkpoint is missing, truncated, pickled, of the wrong kind, or does not fit the model."""


__all__ = ["CheckpointError", "DcaseError", "InputError", "MissingInputError", "OutputExistsError"]
