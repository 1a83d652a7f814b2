"""The runtime's public object: a loaded bundle plus a backend session, with task methods.

``load(bundle, backend="auto", int8=False, threads=None) -> Model``;
``Model.predict(texts)`` for classification bundles, ``Model.tag`` for taggers, and for language
models ``spawn_state()`` (streaming, ``rnnkit.runtime.state``), ``generate`` / ``generate_text``,
``score`` and ``next_tokens`` (decoding in numpy, ``rnnkit.runtime.generate``); for encoder-decoders
``translate`` / ``translate_one`` / ``nbest`` (greedy and beam search, ``rnnkit.runtime.decode``).
Batches are formed by length bucketing (texts sorted by token count, so little padding is
computed) and results come back in the caller's order.

Must not import torch.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import backends
from .bundle import Bundle, open_bundle
from .decode import DEFAULT_ALPHA, Candidate, Steps, beam_search, check_options, greedy, output_limit
from .errors import InputError
from .generate import Sampling, check_max_tokens, choose, log_probs, top_tokens
from .lexicon import Lexicon
from .manifest import ClassifierIO, LanguageModelIO, TaggerIO
from .state import State, check_ids
from .tokenizer import UNK_ID, pad_ids


@dataclass
class Prediction:
    text: str
    label: str
    score: float                 # probability of `label`
    scores: dict[str, float]     # probability of every label, in the bundle's label order

    def to_dict(self) -> dict:
        return {"text": self.text, "label": self.label, "score": self.score, "scores": self.scores}


@dataclass
class Tagging:
    tokens: list[str]
    tags: list[str]
    scores: list[float]          # probability of each chosen tag

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "tags": self.tags, "scores": self.scores}


@dataclass
class Hypothesis:
    """One output of an encoder-decoder for one source."""

    output: str                  # the tokens as text (joined by spaces at word level, directly at char level)
    tokens: list[str]            # target tokens, without <s> and </s>
    score: float                 # ranking score: log_prob / ((5 + n) / 6) ** alpha, n = tokens + 1 (</s>)
    log_prob: float              # log-probability of the output (</s> included when finished), nats
    finished: bool = True        # False: cut at the output length limit before </s>

    def to_dict(self) -> dict:
        return {"output": self.output, "score": self.score}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Model:
    def __init__(self, bundle: Bundle, backend: str = "auto", int8: bool = False, threads: int | None = None):
        self.bundle = bundle
        self.backend = backends.resolve(backend)
        self.int8 = int8
        self.threads = threads
        self.tokenizer = bundle.tokenizer
        self.labels = bundle.labels
        self.max_length = int(bundle.manifest["graph"]["max_length"])
        self.sessions = {name: backends.open_session(bundle.graph(int8, name), bundle.model_path(int8, name),
                                                     self.backend, threads) for name in bundle.graph_names}
        self.session = self.sessions.get("model")  # single-graph tasks
        self._lexicon: Lexicon | None = None      # seq2seq: read on first lookup
        # numba's parallel kernels are not safe to enter from several threads at once: serialise runs there
        self._lock = threading.Lock() if self.backend == "numba" else None
        arch = bundle.manifest["architecture"]
        if bundle.task == "seq2seq":
            self.target_tokenizer = bundle.target_tokenizer
            self.vocab_size = int(arch["target_vocab_size"])
            self._steps = Steps(self._graph_run("encoder"), self._graph_run("decoder"), arch["cell"],
                                arch["attention"], arch["bos_id"], arch["eos_id"], self.vocab_size)
            # a beam wider than the tokens that can be generated is clamped to them (no duplicate hypotheses)
            self.max_beam = self.vocab_size - len(self._steps.never)
        else:
            self.vocab_size = int(arch["vocab_size"])
        if bundle.task == "lm":
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

    def __repr__(self) -> str:
        return (f"Model({str(self.bundle.path)!r}, task={self.bundle.task!r}, backend={self.backend!r}, "
                f"int8={self.int8})")

    # -- low level -----------------------------------------------------------------------
    def logits(self, input_ids: np.ndarray, lengths: np.ndarray, char_ids: np.ndarray | None = None) -> np.ndarray:
        """(B, T) int64 ids padded with 0, (B,) lengths >= 1 [, (B, T, C) char ids] ->
        (B, num_labels) or (B, T, num_tags) float32."""
        feeds = {ClassifierIO.input_ids: np.ascontiguousarray(input_ids, dtype=np.int64),
                 ClassifierIO.sequence_lens: np.ascontiguousarray(lengths, dtype=np.int32)}
        if char_ids is not None:
            feeds[TaggerIO.char_ids] = np.ascontiguousarray(char_ids, dtype=np.int64)
        return self._run([ClassifierIO.logits], feeds)[0]

    def _run(self, names, feeds, session=None) -> list[np.ndarray]:
        session = session or self.session
        if self._lock is None:
            return session.run(names, feeds)
        with self._lock:
            return session.run(names, feeds)

    def _graph_run(self, name: str):
        """One graph of the bundle as ``feeds -> {output name: array}`` (the decode loop's view)."""
        session = self.sessions[name]
        names = [o.name for o in session.get_outputs()]
        return lambda feeds: dict(zip(names, self._run(names, feeds, session)))

    def _require_task(self, task: str, method: str) -> None:
        if self.bundle.task != task:
            other = {"classify": "predict()", "tag": "tag()", "lm": "generate()",
                     "seq2seq": "translate()"}[self.bundle.task]
            raise InputError(f"{self.bundle.path}: a {self.bundle.task} bundle has no {method}; use {other}")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text #{i} is {type(text).__name__}, expected str")
            ids = self.tokenizer.encode(text)[: self.max_length]
            if not ids:
                raise InputError(f"text #{i} ({text!r}) has no tokens; empty or whitespace-only texts "
                                 f"cannot be classified, drop them from the input")
            encoded.append(ids)
        return encoded

    # -- classification ------------------------------------------------------------------
    def predict(self, texts: Sequence[str] | str, batch_size: int = 32,
                progress: Callable[[int], None] | None = None) -> list[Prediction]:
        """Classify texts; ``progress(n)`` is called after each batch with its size."""
        self._require_task("classify", "predict()")
        if isinstance(texts, str):
            texts = [texts]
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        encoded = self.encode(texts)
        probs = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for rows in length_buckets([len(ids) for ids in encoded], batch_size):
            ids, lengths = pad([encoded[r] for r in rows])
            probs[rows] = softmax(self.logits(ids, lengths))
            if progress:
                progress(len(rows))
        best = probs.argmax(axis=1)
        return [Prediction(text, self.labels[b], float(p[b]), {l: float(x) for l, x in zip(self.labels, p)})
                for text, b, p in zip(texts, best, probs)]

    # -- sequence labelling ----------------------------------------------------------------
    def tag(self, sentences: Sequence[str | Sequence[str]] | str, batch_size: int = 32,
            progress: Callable[[int], None] | None = None) -> list[Tagging]:
        """Tag sentences: raw strings (split by the bundle's tokenizer) or lists of tokens.

        An empty sentence gets an empty result; a sentence longer than the bundle's
        ``max_length`` tokens is refused (split it), never silently cut.
        """
        self._require_task("tag", "tag()")
        if isinstance(sentences, str):
            sentences = [sentences]
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        tokens = []
        for i, s in enumerate(sentences):
            words = self.tokenizer.split(s) if isinstance(s, str) else list(s)
            if not all(isinstance(w, str) and w and not w.isspace() for w in words):
                raise InputError(f"sentence #{i}: every token must be a non-empty string, got {words!r}")
            if len(words) > self.max_length:
                raise InputError(f"sentence #{i} has {len(words)} tokens, more than this bundle's max_length "
                                 f"{self.max_length}; split it (or re-export with a larger --max-length)")
            tokens.append(words)
        results = [Tagging([], [], []) for _ in tokens]
        real = [i for i, t in enumerate(tokens) if t]
        for rows in length_buckets([len(tokens[i]) for i in real], batch_size):
            batch = [tokens[real[r]] for r in rows]
            ids, lengths = pad([self.tokenizer.encode_tokens(t) for t in batch])
            chars = self.bundle.charset.encode_batch(batch) if self.bundle.charset is not None else None
            probs = softmax(self.logits(ids, lengths, chars))                    # (B, T, K)
            for b, words in enumerate(batch):
                p = probs[b, : len(words)]
                best = p.argmax(-1)
                results[real[rows[b]]] = Tagging(words, [self.labels[k] for k in best],
                                                 [float(x) for x in p[np.arange(len(words)), best]])
            if progress:
                progress(len(rows))
        return results

    # -- language models ---------------------------------------------------------------------
    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """The state contract's initial value: zeros (layers, batch, hidden) per state input."""
        self._require_task("lm", "initial_state()")
        return {name: np.zeros((self._state_shape[0], batch, self._state_shape[1]), np.float32)
                for name in self.state_inputs}

    def step(self, input_ids: np.ndarray, state: dict[str, np.ndarray], lengths: np.ndarray | None = None
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

    def spawn_state(self) -> State:
        """A fresh streaming state (zeros): ``state.run(chunk)`` as text arrives, ``reset()``, ``copy()``."""
        self._require_task("lm", "spawn_state()")
        return State(self)

    def encode_chunk(self, chunk: str | Sequence[int]) -> list[int]:
        """Text -> ids (characters outside a char-level vocabulary are refused; unknown words are
        ``<unk>``, which word-level training learned from its vocabulary cut-off), or checked ids."""
        if isinstance(chunk, str):
            if self.tokenizer.level == "char":
                unknown = self.tokenizer.unknown(chunk)
                if unknown:
                    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:10])
                    raise InputError(f"characters {shown} are not in this model's vocabulary of "
                                     f"{self.vocab_size - 2} characters; remove or replace them")
            return self.tokenizer.encode(chunk)
        if isinstance(chunk, np.ndarray):
            chunk = chunk.tolist()
        if not isinstance(chunk, (list, tuple)):
            raise InputError(f"a chunk is text (str) or a list of token ids, got {type(chunk).__name__}")
        return check_ids(chunk, self.vocab_size)

    def _context(self, prefix: str | State, method: str) -> State:
        self._require_task("lm", method)
        if isinstance(prefix, State):
            if prefix.model is not self:
                raise InputError(f"{method}: the state was spawned by another model ({prefix.model!r}); "
                                 "states carry one model's recurrent state, spawn one from this model")
            state = prefix
        else:
            state = self.spawn_state()
            state.run(prefix)
        if state.last_logits is None:
            raise InputError(f"{method}: the prompt is empty (no tokens); a language model needs at least one "
                             "token of context, e.g. a newline or the first character of the text")
        return state

    def generate(self, prompt: str | State, max_tokens: int = 200, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop: str | Sequence[str] | None = None) -> Iterator[str]:
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
        tail, keep = "", max((len(x) for x in stops), default=0) + 64
        for _ in range(max_tokens):
            token_id = choose(state.last_logits, sampling, rng)
            token = self.tokenizer.vocab[token_id]
            state.feed_id(token_id)
            yield token
            if stops:
                tail = (tail + self.token_separator + token)[-keep:] if tail else token
                if any(x in tail for x in stops):
                    return

    def generate_text(self, prompt: str | State, max_tokens: int = 200, **options) -> str:
        """``generate`` joined into one string (characters directly, words with spaces)."""
        return self.token_separator.join(self.generate(prompt, max_tokens, **options))

    def score(self, text: str | Sequence[int]) -> dict:
        """Per-token log-probabilities (nats) of ``text`` under the model, from the zero state:
        ``{"tokens", "logprobs", "loss", "perplexity"}``; the first token has no prediction
        (no start token), so ``logprobs[i]`` scores ``tokens[i + 1]``."""
        self._require_task("lm", "score()")
        ids = self.encode_chunk(text)
        if len(ids) < 2:
            raise InputError(f"score() needs at least 2 tokens (the first one is the context), got {len(ids)}")
        logits = self.spawn_state().run(ids)                                      # (t, V)
        lp = np.take_along_axis(log_probs(logits[:-1]), np.asarray(ids[1:])[:, None], 1)[:, 0]
        loss = float(-lp.mean())
        return {"tokens": [self.tokenizer.vocab[i] for i in ids], "logprobs": [float(x) for x in lp],
                "loss": loss, "perplexity": float(np.exp(min(loss, 700.0)))}

    def next_tokens(self, prefix: str | State, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens after ``prefix`` (text or a ``State``, not advanced) with
        their probabilities: keyboard-style suggestions."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        state = self._context(prefix, "next_tokens()")
        return [(self.tokenizer.vocab[i], p) for i, p in top_tokens(state.last_logits, int(k))]

    # -- encoder-decoders ---------------------------------------------------------------------
    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        """Source texts -> id rows.  Words / characters outside the source vocabulary become ``<unk>``
        (the model was trained with the same cut-off); a text without tokens (empty, or only spaces
        at word level) and a text longer than the bundle's ``max_length`` tokens are refused, never
        silently dropped or cut (split long texts, e.g. into sentences)."""
        sources = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text #{i} is {type(text).__name__}, expected str")
            ids = self.tokenizer.encode(text)
            if not ids:
                raise InputError(f"text #{i} ({text!r}) has no tokens; an empty source has no output, "
                                 f"drop it from the input")
            if len(ids) > self.max_length:
                raise InputError(f"text #{i} has {len(ids)} tokens, more than this bundle's max_length "
                                 f"{self.max_length}; split it (or re-export with a larger --max-length)")
            sources.append(ids)
        return sources

    def nbest(self, texts: Sequence[str] | str, n: int = 5, beam: int | None = None, alpha: float = DEFAULT_ALPHA,
              max_output_tokens: int | None = None, batch_size: int = 32,
              progress: Callable[[int], None] | None = None, lookup: bool = False) -> list[list[Hypothesis]]:
        """The ``n`` best outputs of each text, best first, by beam search of width ``beam`` (default
        ``n``; clamped to the number of target tokens that can be generated); ``beam=1`` is greedy.

        ``alpha``: GNMT length penalty exponent (0: rank by log-probability); ``max_output_tokens``:
        output tokens per text (default ``2 x source tokens + 10``, at most 1024).  Texts are decoded
        ``batch_size`` at a time (``batch_size x beam`` decoder rows), grouped by length;
        ``progress(k)`` is called after each batch of k texts.  ``lookup``: texts found in the bundle's
        lexicon (``rnnkit export --lexicon``) get its outputs (score 0.0), the rest are decoded."""
        self._require_task("seq2seq", "nbest()")
        if isinstance(texts, str):
            texts = [texts]
        if lookup:
            return self._nbest_with_lookup(list(texts), n, beam, alpha, max_output_tokens, batch_size, progress)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}")
        beam = n if beam is None else beam
        check_options(beam, alpha, max_output_tokens)
        if n > beam:
            raise InputError(f"n={n} outputs need a beam of at least n, got beam={beam}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        beam = min(int(beam), self.max_beam)
        sources = self.encode_sources(texts)
        results: list[list[Hypothesis]] = [[] for _ in sources]
        for rows in length_buckets([len(s) for s in sources], batch_size):
            batch = [sources[r] for r in rows]
            limits = [output_limit(len(s), max_output_tokens) for s in batch]
            if beam == 1:
                found = [[c] for c in greedy(self._steps, batch, limits, alpha)]
            else:
                found = beam_search(self._steps, batch, limits, beam, alpha)
            for r, candidates in zip(rows, found):
                results[r] = [self._hypothesis(c) for c in candidates[:n]]
            if progress:
                progress(len(rows))
        return results

    def translate(self, texts: Sequence[str] | str, beam: int = 5, alpha: float = DEFAULT_ALPHA,
                  max_output_tokens: int | None = None, batch_size: int = 32,
                  progress: Callable[[int], None] | None = None, lookup: bool = False) -> list[str]:
        """The best output of each text (beam search; ``beam=1``: greedy); see ``nbest``."""
        return [h[0].output for h in self.nbest(texts, 1, beam, alpha, max_output_tokens, batch_size, progress,
                                                 lookup)]

    @property
    def lexicon(self) -> Lexicon:
        """The bundle's lexicon (``rnnkit export --lexicon``), read on first use."""
        if self._lexicon is None:
            record = self.bundle.manifest.get("lexicon")
            if not isinstance(record, dict) or record.get("file") not in self.bundle.manifest["files"]:
                raise InputError(f"{self.bundle.path}: this bundle has no lexicon to look words up in; re-export "
                                 f"it with --lexicon FILE, or drop lookup / --lookup")
            self._lexicon = Lexicon.read(self.bundle.path / record["file"], self.bundle.tokenizer.normalize)
        return self._lexicon

    def _nbest_with_lookup(self, texts, n, beam, alpha, max_output_tokens, batch_size, progress):
        known = [self.lexicon.get(t) if isinstance(t, str) else None for t in texts]
        todo = [i for i, k in enumerate(known) if k is None]
        decoded = self.nbest([texts[i] for i in todo], n, beam, alpha, max_output_tokens, batch_size, progress)
        results: list[list[Hypothesis]] = [[] for _ in texts]
        for i, found in zip(todo, decoded):
            results[i] = found
        for i, outputs in enumerate(known):
            if outputs is not None:
                results[i] = [Hypothesis(o, o.split() if self.target_tokenizer.level == "word" else list(o), 0.0, 0.0)
                              for o in outputs[:n]]
        if progress and len(texts) > len(todo):
            progress(len(texts) - len(todo))
        return results

    def translate_one(self, text: str, beam: int = 5, **options) -> str:
        """``translate`` for one text."""
        if not isinstance(text, str):
            raise InputError(f"translate_one takes one text (str), got {type(text).__name__}; use translate() "
                             "for a list")
        return self.translate([text], beam, **options)[0]

    def _hypothesis(self, c: Candidate) -> Hypothesis:
        vocab = self.target_tokenizer.vocab
        return Hypothesis(self.target_tokenizer.decode(c.ids), [vocab[i] for i in c.ids], c.score, c.log_prob,
                          c.finished)

    def warmup(self) -> float:
        """Run one tiny batch (compiles numba kernels or fills caches); returns seconds taken."""
        start = time.perf_counter()
        if self.bundle.task == "seq2seq":
            beam_search(self._steps, [[UNK_ID] * 3], [2], min(2, self.max_beam))
            return time.perf_counter() - start
        if self.bundle.task == "lm":
            self.step(np.full((1, 3), 2, np.int64), self.initial_state(1))
            return time.perf_counter() - start
        ids, lengths = pad([[1, 1, 1], [1]])
        chars = np.ones((2, 3, 2), dtype=np.int64) if self.bundle.charset is not None else None
        self.logits(ids, lengths, chars)
        return time.perf_counter() - start


pad = pad_ids  # right-pad id rows with <pad> = 0 -> ((B, T) int64, (B,) int32)


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterable[np.ndarray]:
    """Row indices in batches of similar length (stable sort keeps equal lengths in order)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def load(path: str | os.PathLike, backend: str = "auto", int8: bool = False, threads: int | None = None) -> Model:
    """Open and verify a bundle, then start a session on the chosen backend."""
    return Model(open_bundle(path), backend=backend, int8=int8, threads=threads)
