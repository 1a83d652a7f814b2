"""One error hierarchy for all of rnnkit.

Every message names the file / key / flag, the value received, what was expected and
what to do, e.g. ``manifest.json: 'tokenizer.vocab' has 5001 entries but 'vocab_size'
is 5000 -- re-export the bundle``.  The CLI turns these into exit code 1 without a
traceback; argument problems are click's own (exit code 2).

Must not import torch, onnxruntime or numba (pure stdlib).
"""


class RnnkitError(Exception):
    """Base class: an expected failure with an actionable message."""


class BundleError(RnnkitError):
    """A bundle or checkpoint on disk is missing, corrupted, tampered with or inconsistent."""


class InputError(RnnkitError):
    """User data (texts, files, columns, labels) cannot be used as given."""


class BackendUnavailableError(RnnkitError):
    """The chosen backend needs a package that is not installed."""


class UnsupportedError(RnnkitError):
    """A graph, op, attribute or model structure rnnkit cannot run or export faithfully."""


class ParityError(RnnkitError):
    """Export-time validation found outputs outside tolerance (the message lists every miss)."""


class TaskMismatchError(InputError, AttributeError):
    """A task object was asked for another task's method (a classifier's ``generate``): the bundle is the wrong kind.

    An ``AttributeError`` (the object has no such method: ``hasattr`` is False) that the CLI reports
    like any ``RnnkitError``."""
