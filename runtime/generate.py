"""Decoding a language model's logits into tokens, in numpy, identically on every backend.

Sampling happens here, never in a graph: logits come from the backend as float32, everything
after that is float64 numpy with a seeded ``np.random.Generator`` drawing exactly one uniform
number per generated token, whatever the distribution.  Two backends whose logits differ by
float32 rounding (FP32 tolerance) therefore pick the same token unless two candidates are within
that rounding of each other at the sampled point (a true tie: greedy ``argmax`` of near-equal
logits, or a uniform draw landing on a CDF boundary) -- tested on both backends for greedy and
seeded sampling.

Order of the filters (as Hugging Face's ``generate``): temperature, top-k, top-p (nucleus), then
one inverse-CDF draw.  ``temperature == 0`` is greedy decoding (argmax; top-k/top-p then do not
matter).  ``<pad>`` and ``<unk>`` are never generated (their logits are masked).

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .tokenizer import PAD_ID, UNK_ID

MAX_TOKENS_LIMIT = 1_000_000  # one call generates at most this many tokens: a typo must not run for days
NEVER = (PAD_ID, UNK_ID)  # ids never generated


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0: greedy; > 0: divide the logits by it
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p, in (0, 1]

    def __post_init__(self):
        t, k, p = self.temperature, self.top_k, self.top_p
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = no top-k filter), got {k!r}")
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0.0 < p <= 1.0):
            raise InputError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def check_max_tokens(max_tokens) -> int:
    if not isinstance(max_tokens, (int, np.integer)) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise InputError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    if max_tokens > MAX_TOKENS_LIMIT:
        raise InputError(
            f"max_tokens is {max_tokens}, more than the limit of {MAX_TOKENS_LIMIT} per call; "
            "call generate() again from the same state to continue"
        )
    return int(max_tokens)


def log_probs(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def distribution(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """(V,) logits -> the (V,) float64 probabilities sampling draws from (masked, filtered, normalised)."""
    z = np.asarray(logits, dtype=np.float64).copy()
    z[list(NEVER)] = -np.inf
    z /= s.temperature
    if s.top_k and s.top_k < z.size:
        kth = np.partition(z, -s.top_k)[-s.top_k]
        z[z < kth] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if s.top_p < 1.0:
        order = np.argsort(-p, kind="stable")  # most likely first, ties by id
        cum = np.cumsum(p[order])
        keep = int(np.searchsorted(cum, s.top_p)) + 1  # smallest prefix reaching top_p
        p[order[keep:]] = 0.0
        p /= p.sum()
    return p


def choose(logits: np.ndarray, s: Sampling, rng: np.random.Generator | None) -> int:
    """Next token id: argmax when greedy, else one inverse-CDF draw from ``distribution``."""
    if s.greedy:
        z = np.asarray(logits, dtype=np.float64).copy()
        z[list(NEVER)] = -np.inf
        return int(np.argmax(z))
    p = distribution(logits, s)
    assert rng is not None, "sampling needs a generator"  # only greedy decoding may pass None
    u = rng.random()  # exactly one draw per token
    idx = int(np.searchsorted(np.cumsum(p), u, side="right"))
    return min(idx, int(np.flatnonzero(p)[-1]))  # u at 1 - eps: the last non-zero entry


def top_tokens(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (id, probability) pairs, <pad>/<unk> excluded, ties by id."""
    z = np.asarray(logits, dtype=np.float64).copy()
    z[list(NEVER)] = -np.inf
    p = np.exp(log_probs(z))
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order if p[i] > 0]
