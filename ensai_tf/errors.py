"""Exceptions that carry a message meant for the user.

The ``ensai`` command prints these without a traceback and exits non-zero.
Each names the file, key or value at fault and what is expected instead.
"""

__all__ = ["EnsaiError", "InputError", "ModelDirError", "NonFiniteLossError"]


class EnsaiError(Exception):
    """Base class of errors whose message is complete for a user."""


class InputError(EnsaiError, ValueError):
    """A user-supplied image, file or array cannot be used (names the file and why)."""


class ModelDirError(EnsaiError, ValueError):
    """A model directory is missing, incomplete, or would be overwritten."""


class NonFiniteLossError(EnsaiError, FloatingPointError):
    """Training stopped because the loss became NaN or Inf (names the folder and what was kept)."""
