"""Language models: a step graph with explicit recurrent state, streamed and decoded in numpy.

``LanguageModel.spawn_state() -> State`` (``rnnkit.runtime.state``) feeds text as it arrives;
``generate`` / ``generate_text`` sample or pick tokens (``rnnkit.runtime.generate``), ``score``
gives per-token log-probabilities and ``next_tokens`` keyboard-style suggestions.  The graph's
contract is ``manifest.LanguageModelIO``: ``input_ids, sequence_lens, initial_h[, initial_c] ->
logits, final_h[, final_c]``, the state fed back call after call.  There is no length limit:
``State.run`` feeds long texts in chunks of ``max_length`` and carries the state, which is exact.

Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .errors import InputError
from .generate import Sampling, check_max_tokens, choose, log_probs, top_tokens
from .manifest import LanguageModelIO
from .session import Progress, Session, check_batch_size
from .state import State, check_ids


@dataclass
class Generation:
    """One prompt's continuation (``LanguageModel.run_batch``)."""

    prompt: str
    text: str  # the generated tokens joined (characters directly, words with spaces)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "text": self.text}


class LanguageModel(Session):
    """An ``lm`` bundle: ``spawn_state``, ``generate``, ``generate_text``, ``score``, ``next_tokens``,
    and the step graph itself (``initial_state``, ``step``)."""

    task = "lm"
    noun = "a language-model"
    verb = "generate"

    def __init__(self, bundle, backend: str = "auto", int8: bool = False, threads: int | None = None):
        super().__init__(bundle, backend, int8, threads)
        arch = bundle.manifest["architecture"]
        self.vocab_size = int(arch["vocab_size"])
        self.state_inputs = LanguageModelIO.state_inputs(arch["cell"])
        self.state_outputs = LanguageModelIO.state_outputs(arch["cell"])
        self._state_shape = (int(arch["layers"]), int(arch["hidden"]))
        # the step's fixed parts, built once: a generation step is ~0.05-0.5 ms, and Python done
        # per call after a 10 MB head has streamed through the caches costs several times its
        # warm price (benchmarks/lm_step.py)
        self._step_outputs = [LanguageModelIO.logits, *self.state_outputs]
        self._state_names = [LanguageModelIO.STATE_PAIRS[o] for o in self.state_outputs]
        self._full_lengths: dict[tuple[int, int], np.ndarray] = {}
        self.token_separator = "" if self.tokenizer.level == "char" else " "
        # a word LM trained on lines (PTB-style) reads each line end as this token; as text it is a newline
        self._line_end = getattr(self.tokenizer, "eos_token", None) if self.token_separator else None

    # -- the step graph ---------------------------------------------------------------------
    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """The state contract's initial value: zeros (layers, batch, hidden) per state input."""
        return {
            name: np.zeros((self._state_shape[0], batch, self._state_shape[1]), np.float32)
            for name in self.state_inputs
        }

    def step(
        self, input_ids: np.ndarray, state: dict[str, np.ndarray], lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One call of the step graph: (B, T) ids from ``state`` -> (B, T, V) logits, the new state."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        lens = self._lengths(ids.shape) if lengths is None else lengths.astype(np.int32)
        feeds = {LanguageModelIO.input_ids: ids, LanguageModelIO.sequence_lens: lens, **state}
        out = self._run(self._step_outputs, feeds)
        return out[0], dict(zip(self._state_names, out[1:]))

    def _lengths(self, shape: tuple[int, int]) -> np.ndarray:
        """(B,) int32 lengths T, read-only and kept per (B, T): every step of a stream feeds the same."""
        lens = self._full_lengths.get(shape)
        if lens is None:
            lens = np.full(shape[0], shape[1], np.int32)
            lens.flags.writeable = False
            if len(self._full_lengths) < 64:
                self._full_lengths[shape] = lens
        return lens

    # -- streaming ----------------------------------------------------------------------------
    def spawn_state(self) -> State:
        """A fresh streaming state (zeros): ``state.run(chunk)`` as text arrives, ``reset()``, ``copy()``."""
        return State(self)

    def encode_chunk(self, chunk: str | Sequence[int]) -> list[int]:
        """Text -> ids (characters outside a char-level vocabulary are refused; unknown words are
        ``<unk>``, which word-level training learned from its vocabulary cut-off), or checked ids."""
        if isinstance(chunk, str):
            if self.tokenizer.level == "char":
                unknown = self.tokenizer.unknown(chunk)
                if unknown:
                    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:10])
                    raise InputError(
                        f"characters {shown} are not in this model's vocabulary of "
                        f"{self.vocab_size - 2} characters; remove or replace them"
                    )
            return self.tokenizer.encode(chunk)
        if isinstance(chunk, np.ndarray):
            chunk = chunk.tolist()
        if not isinstance(chunk, (list, tuple)):
            raise InputError(f"a chunk is text (str) or a list of token ids, got {type(chunk).__name__}")
        return check_ids(chunk, self.vocab_size)

    def _context(self, prefix: str | State, method: str) -> State:
        if isinstance(prefix, State):
            if prefix.model is not self:
                raise InputError(
                    f"{method}: the state was spawned by another model ({prefix.model!r}); "
                    "states carry one model's recurrent state, spawn one from this model"
                )
            state = prefix
        else:
            state = self.spawn_state()
            state.run(prefix)
        if state.last_logits is None:
            raise InputError(
                f"{method}: the prompt is empty (no tokens); a language model needs at least one "
                "token of context, e.g. a newline or the first character of the text"
            )
        return state

    # -- decoding -------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | State,
        max_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> Iterator[str]:
        """Tokens (characters or words) one at a time, as produced, after ``prompt`` (text, or a
        ``State`` to continue; that state advances).  ``temperature=0``: greedy; ``seed``: the same
        tokens on every run and backend.  Stops after ``max_tokens`` or once the generated text
        contains a ``stop`` string (the token completing it is the last yielded).  Arguments are
        checked when called, before the first token."""
        sampling = Sampling(temperature, top_k, top_p)
        max_tokens = check_max_tokens(max_tokens)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(x, str) or not x for x in stops):
            raise InputError(f"stop must be a non-empty string or a list of them, got {stop!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise InputError(f"seed must be an integer >= 0 or None, got {seed!r}")
        state = self._context(prompt, "generate()")
        rng = np.random.default_rng(seed)
        return self._tokens(state, max_tokens, sampling, rng, stops)

    def _tokens(self, state: State, max_tokens: int, sampling: Sampling, rng, stops: list[str]) -> Iterator[str]:
        tail, keep, previous = "", max((len(x) for x in stops), default=0) + 64, None
        for _ in range(max_tokens):
            assert state.last_logits is not None  # _context refused an empty prompt, and feed_id sets it
            token_id = choose(state.last_logits, sampling, rng)
            token = self.tokenizer.vocab[token_id]
            state.feed_id(token_id)
            yield token
            if stops:  # matched against the text as rendered (a word LM's line end is a newline)
                tail = (tail + self.piece(token, previous))[-keep:]
                previous = token
                if any(x in tail for x in stops):
                    return

    def piece(self, token: str, previous: str | None = None) -> str:
        """``token`` as text after ``previous`` (None: at the start of the text): a character as it
        is; a word after a space, except at the start and after a line end; a word LM's line-end
        token (``<eos>`` of PTB-style corpora) as a newline."""
        if not self.token_separator:
            return token
        if self._line_end is not None and token == self._line_end:
            return "\n"
        return token if previous is None or previous == self._line_end else " " + token

    def render(self, tokens: Sequence[str]) -> str:
        """Generated tokens as text (``piece`` by ``piece``)."""
        return "".join(self.piece(t, p) for t, p in zip(tokens, [None, *tokens[:-1]]))

    def generate_text(self, prompt: str | State, max_tokens: int = 200, **options) -> str:
        """``generate`` as one string (``render``: characters directly, words with spaces, a word
        LM's line-end token as a newline)."""
        return self.render(list(self.generate(prompt, max_tokens, **options)))

    def score(self, text: str | Sequence[int]) -> dict:
        """Per-token log-probabilities (nats) of ``text`` under the model, from the zero state:
        ``{"tokens", "logprobs", "loss", "perplexity"}``; the first token has no prediction
        (no start token), so ``logprobs[i]`` scores ``tokens[i + 1]``."""
        ids = self.encode_chunk(text)
        if len(ids) < 2:
            raise InputError(f"score() needs at least 2 tokens (the first one is the context), got {len(ids)}")
        logits = self.spawn_state().run(ids)  # (t, V)
        lp = np.take_along_axis(log_probs(logits[:-1]), np.asarray(ids[1:])[:, None], 1)[:, 0]
        loss = float(-lp.mean())
        return {
            "tokens": [self.tokenizer.vocab[i] for i in ids],
            "logprobs": [float(x) for x in lp],
            "loss": loss,
            "perplexity": float(np.exp(min(loss, 700.0))),
        }

    def next_tokens(self, prefix: str | State, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens after ``prefix`` (text or a ``State``, not advanced) with
        their probabilities: keyboard-style suggestions."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        state = self._context(prefix, "next_tokens()")
        assert state.last_logits is not None  # _context refuses a state without
        return [(self.tokenizer.vocab[i], p) for i, p in top_tokens(state.last_logits, int(k))]

    def run_batch(
        self,
        items: Sequence[str],
        batch_size: int = 32,
        progress: Progress | None = None,
        truncate: bool = False,
        max_tokens: int = 200,
        **sampling,
    ) -> list[Generation]:
        """``generate_text`` for each prompt (``sampling``: ``generate``'s temperature, top_k, top_p,
        seed, stop), as the batch entry point every task object has (``Session.run_batch``).

        Prompts run one stream each (generation is sequential per prompt), so ``batch_size`` only
        has to be valid and ``progress(1)`` follows each prompt; ``truncate`` has no effect either:
        a language model has no input limit (``State.run`` chunks long prompts).  A prompt without
        tokens is refused as "text #i", as the other tasks refuse empty texts."""
        check_batch_size(batch_size)
        results = []
        for i, prompt in enumerate(items):
            if not isinstance(prompt, str):
                raise InputError(f"text #{i} is {type(prompt).__name__}, expected str")
            try:
                ids = self.encode_chunk(prompt)
            except InputError as exc:
                raise InputError(f"text #{i}: {exc}") from None
            if not ids:
                raise InputError(
                    f"text #{i} ({prompt!r}) has no tokens; a language model needs at least one token of context"
                )
            results.append(Generation(prompt, self.generate_text(prompt, max_tokens, **sampling)))
            if progress:
                progress(1)
        return results

    def _warm(self) -> None:
        self.step(np.full((1, 3), 2, np.int64), self.initial_state(1))
