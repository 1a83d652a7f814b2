"""Torch oracles: a torch module run on parity feeds, the reference every written graph must match.

``torch_forward`` calls a module as ``forward(input_ids, lengths)`` (classifiers, taggers through
a wrapper, users' own modules through ``export_module(forward=...)``); the language model and the
encoder-decoder have their own in their task modules.  Every oracle runs on one torch thread
(``one_torch_thread``), and whatever a forward raises comes back as an ``InputError`` that names
the module, the batch and the fix (``forward_error``).

Imports torch inside the functions only.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..runtime.errors import InputError, RnnkitError
from ..runtime.manifest import ClassifierIO
from .validate import Forward, _short


def module_path(module) -> str:
    """``package.module.ClassName``: where the user's code lives."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


@contextlib.contextmanager
def one_torch_thread():
    """Run a torch oracle on one intra-op thread, restoring the caller's setting after.  Parity batches
    are at most 8 rows, so each recurrent step is a tiny matmul: more threads only add synchronisation,
    and on a busy machine their spin-waits cost far more (measured on 2 shared cores, a 2-layer BiLSTM
    over one 10,000-token row: 0.018 s on one thread, 3.4 s on two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torch_forward(module, call=None, user: bool = False) -> Forward:
    """The module on parity feeds.  Whatever its forward raises comes back as an ``InputError`` naming the
    module's class and what to do (``user``: a user's module, which ``export_module(forward=...)`` can adapt)."""
    import torch

    module.eval()
    call = call or (lambda m, ids, lens: m(ids, lens))

    def forward(feed: dict) -> np.ndarray:
        ids = torch.from_numpy(feed[ClassifierIO.input_ids])
        lens = torch.from_numpy(feed[ClassifierIO.sequence_lens].astype(np.int64))
        try:
            with torch.no_grad(), one_torch_thread():
                out = call(module, ids, lens)
            return out.detach().cpu().numpy().astype(np.float32)
        except RnnkitError:
            raise
        except Exception as exc:  # the user's code: say whose, on what, and what to do
            raise forward_error(module, exc, feed[ClassifierIO.sequence_lens], ids.shape[1], user) from exc

    return forward


def forward_error(module, exc: Exception, lengths, time: int, user: bool = True) -> InputError:
    """What the user's forward raised on a parity batch, as an ``InputError`` that says where and what to do."""
    text = (str(exc).strip().splitlines() or [""])[0]
    where = (
        f"{module_path(module)}.forward raised {type(exc).__name__} during export validation "
        f"(batch={len(lengths)}, time={time}, lengths={_short(lengths.tolist())}): {text}"
    )
    if "enforce_sorted" in str(exc):
        advice = (
            "validation runs ragged batches whose lengths come in any order: pass enforce_sorted=False to "
            "nn.utils.rnn.pack_padded_sequence (the packed result is the same, sorted or not)"
        )
    elif isinstance(exc, AttributeError) and "detach" in str(exc):
        advice = (
            "the forward must return one tensor of scores (batch, labels); if it returns a tuple, pass "
            "forward=lambda module, ids, lengths: module(ids, lengths)[0] to export_module"
        )
    else:
        advice = (
            "validation calls forward(input_ids, lengths): input_ids (batch, time) int64 padded with 0, "
            "lengths (batch,) int64, both on the CPU"
        )
        if user:
            advice += (
                "; make the forward accept them, or tell export_module how to call it with "
                "forward=lambda module, input_ids, lengths: ..."
            )
    return InputError(f"{where}; {advice}")
