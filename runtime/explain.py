"""Explaining a prediction: which tokens decided it (``Model.explain(texts, method=...)``).

Two methods, both torch-free and on either backend:

* ``occlusion`` (every classifier and tagger): each token in turn is replaced by ``<unk>`` and the
  text is run again; a token's raw score is how much the probability of the predicted label (a
  tagger: of each token's predicted tag) falls without it.  The original and all its variants
  are one batch of equal-length rows: one graph call per text.  Replacing rather than dropping
  keeps every other token at its position (a tagger's token ``i`` stays token ``i``) and keeps
  the variant a sentence the model was trained on (unknown words occur in training; a sentence
  with a word cut out is often not grammatical).  A token that already reads as ``<unk>`` scores 0.
* ``attention``: what the model itself weighted.  A classifier with ``pooling="attention"`` gives
  its pooling weights (its graph's ``pooling_weights`` output, validated against torch at export;
  a bundle exported before rnnkit wrote that output is refused with a pointer to occlusion and
  to re-exporting); an encoder-decoder with attention gives, per output token, the decoder's
  attention over the source (its graph's ``attention`` output): the alignment.

Scores are normalised to a sum of absolute values of 1 (``normalise``), so both methods read the
same way: a share of the total evidence, positive for tokens that support the prediction and
(occlusion only) negative for tokens that speak against it.  ``raw`` keeps the unnormalised
numbers (probability drops, or the attention weights themselves).

Must not import torch (nor matplotlib: rendering is ``explain_render`` / the toolkit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import InputError
from .manifest import ClassifierIO
from .tokenizer import UNK_ID
from .tolerance import FP32

METHODS = ("occlusion", "attention")


@dataclass
class Explanation:
    """One text's explanation: a score per token, the method, and the prediction it explains."""

    text: str
    tokens: list[str]  # the tokens scored, as the text spells them
    scores: list[float]  # one per token, sum of |scores| = 1 (all 0 when nothing changed the prediction)
    method: str  # "occlusion" | "attention"
    prediction: dict  # what was explained: {"label", "score", "scores"} / {"tags", ...} / {"output", ...}
    raw: list[float] = field(default_factory=list)  # before normalising: probability drops or attention weights
    # per predicted item (a tagger's tags, an encoder-decoder's output tokens) x tokens: the rows
    # of ``alignment`` are those items (``targets``), each row normalised like ``scores``
    alignment: list[list[float]] | None = None
    targets: list[str] | None = None
    truncated: int = 0  # tokens dropped from the end of the text (truncate=True)

    def top(self, k: int) -> list[int]:
        """Positions of the ``k`` highest scores, highest first (ties: the earlier token)."""
        order = sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))
        return [i for i in order[: max(0, k)] if self.scores[i] > 0]

    def to_dict(self) -> dict:
        d: dict = {
            "text": self.text,
            "tokens": self.tokens,
            "scores": self.scores,
            "method": self.method,
            "prediction": self.prediction,
            "raw": self.raw,
        }
        if self.alignment is not None:
            d["alignment"] = self.alignment
            d["targets"] = self.targets
        if self.truncated:
            d["truncated"] = self.truncated
        return d


def settled(drops: np.ndarray) -> np.ndarray:
    """Occlusion's probability drops with those under ``FP32.atol`` set to 0: a change that small is
    float32 rounding (the backends agree only within it), and would otherwise rank a token that
    changed nothing on one backend above zero and below it on the other."""
    drops = np.asarray(drops, dtype=np.float64)
    return np.where(np.abs(drops) < FP32.atol, 0.0, drops)


def normalise(raw: np.ndarray) -> np.ndarray:
    """Divide by the sum of absolute values (float64); all zeros stay zeros."""
    raw = np.asarray(raw, dtype=np.float64)
    total = np.abs(raw).sum()
    return raw / total if total > 0 else np.zeros_like(raw)


def check_method(method, works: dict[str, str | None], noun: str) -> str:
    """``method`` if this bundle can do it; ``works`` maps each method to None (it works) or why not."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    why = works[method]
    if why is None:
        return method
    usable = [m for m, reason in works.items() if reason is None]
    instead = f"use method={usable[0]!r}, which works for this bundle" if usable else "no method works for it"
    raise InputError(f"method {method!r} cannot explain this {noun}: {why}; {instead}")


def occluded(ids: Sequence[int]) -> np.ndarray:
    """(n + 1, n) int64: row 0 the ids as given, row j + 1 with token j replaced by ``<unk>``."""
    n = len(ids)
    rows = np.tile(np.asarray(ids, dtype=np.int64), (n + 1, 1))
    rows[np.arange(1, n + 1), np.arange(n)] = UNK_ID
    return rows


def display_tokens(tokenizer, text: str, count: int) -> list[str]:
    """The text's tokens as it spells them (``split``: case kept), or as normalised when that
    differs in number (a lower-casing that changes the count) or the tokenizer has no ``split``."""
    split = getattr(tokenizer, "split", None)
    if split is not None:
        tokens = split(text)
        if len(tokens) >= count:
            return tokens[:count]
    return tokenizer.tokenize(text)[:count]


def _texts(texts) -> list:
    return [texts] if isinstance(texts, str) else list(texts)


# -- classifiers ----------------------------------------------------------------------------------


def classifier_methods(model) -> dict[str, str | None]:
    manifest = model.bundle.manifest
    pooling = manifest["architecture"].get("pooling")
    if pooling != "attention":
        why = f"it pools its states by {pooling!r}, and only pooling='attention' weights tokens"
    elif not ClassifierIO.declares_pooling_weights(manifest["graph"]):
        why = (
            f"its graph has no {ClassifierIO.pooling_weights!r} output (exported before rnnkit wrote the "
            "attention weights, or by export_module from a module whose attention rnnkit cannot validate); "
            "re-export it from the checkpoint with a current rnnkit (`rnnkit export CKPT --out BUNDLE`) to "
            "get attention"
        )
    else:
        why = None
    return {"occlusion": None, "attention": why}


def explain_classifier(model, texts, method: str = "occlusion", truncate: bool = False) -> list[Explanation]:
    """``Classifier.explain``: one ``Explanation`` per text (see the module's docstring)."""
    texts = _texts(texts)
    method = check_method(method, classifier_methods(model), "classifier bundle")
    encoded, dropped = model._encode_texts(texts, truncate, "an empty text has no tokens to explain")
    out = []
    for text, ids, cut in zip(texts, encoded, dropped):
        if method == "occlusion":
            rows = occluded(ids)
            probs = _softmax(model.logits(rows, np.full(len(rows), len(ids), np.int32)))
            best = int(probs[0].argmax())
            raw = settled(probs[0, best] - probs[1:, best])
        else:
            probs, alpha = model_attention(model, ids)
            best = int(probs[0].argmax())
            raw = alpha
        prediction = {
            "label": model.labels[best],
            "score": float(probs[0, best]),
            "scores": {label: float(p) for label, p in zip(model.labels, probs[0])},
        }
        tokens = display_tokens(model.tokenizer, text, len(ids))
        out.append(Explanation(text, tokens, _floats(normalise(raw)), method, prediction, _floats(raw), truncated=cut))
    return out


def model_attention(model, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One text through the graph, its declared ``pooling_weights`` fetched with the logits (the
    session ``predict`` uses: only ``explain`` asks for the second output):
    (1, labels) probabilities, (n,) weights."""
    feeds = {
        ClassifierIO.input_ids: np.asarray([ids], dtype=np.int64),
        ClassifierIO.sequence_lens: np.asarray([len(ids)], dtype=np.int32),
    }
    logits, weights = model._run([ClassifierIO.logits, ClassifierIO.pooling_weights], feeds)
    return _softmax(logits), np.asarray(weights, dtype=np.float64).reshape(len(ids))


# -- taggers --------------------------------------------------------------------------------------


def explain_tagger(
    model, sentences, method: str = "occlusion", token: int | None = None, truncate: bool = False
) -> list[Explanation]:
    """``Tagger.explain``: per sentence, how each word drives each token's tag (``alignment``: row i
    = the tag of token i).  ``scores``: with ``token=i`` that row; without, each word's total
    absolute effect over all the sentence's tags, normalised."""
    sentences = _texts(sentences)
    works = {"occlusion": None, "attention": "a tagger has no attention weights"}
    method = check_method(method, works, "tagger bundle")
    tokens, dropped = model._tokens(sentences, truncate)
    out = []
    for i, (sentence, words, cut) in enumerate(zip(sentences, tokens, dropped)):
        if not words:
            raise InputError(f"sentence #{i} ({sentence!r}) has no tokens; an empty sentence has nothing to explain")
        if token is not None and not (isinstance(token, (int, np.integer)) and 0 <= token < len(words)):
            raise InputError(f"token must be a position in 0..{len(words) - 1} of sentence #{i}, got {token!r}")
        n = len(words)
        rows = occluded(model.tokenizer.encode_tokens(words))
        chars = None
        if model.bundle.charset is not None:
            # the replaced word also loses its spelling: one unknown character, as a never-seen word reads
            chars = np.tile(model.bundle.charset.encode_batch([words]), (n + 1, 1, 1))
            chars[np.arange(1, n + 1), np.arange(n), :] = 0
            chars[np.arange(1, n + 1), np.arange(n), 0] = UNK_ID
        probs = _softmax(model.logits(rows, np.full(n + 1, n, np.int32), chars))  # (n + 1, n, K)
        best = probs[0].argmax(-1)
        kept = probs[0, np.arange(n), best]  # (n,)
        drops = settled(kept[None, :] - probs[1:, np.arange(n), best])  # (word j, token i)
        matrix = drops.T  # row i: the tag of token i, column j: word j
        raw = matrix[token] if token is not None else np.abs(matrix).sum(axis=0)
        prediction: dict = {"tags": [model.labels[k] for k in best], "scores": _floats(kept)}
        if token is not None:
            prediction.update(token=int(token), tag=model.labels[best[token]])
        out.append(
            Explanation(
                sentence if isinstance(sentence, str) else " ".join(sentence),
                list(words),
                _floats(normalise(raw)),
                method,
                prediction,
                _floats(raw),
                [_floats(normalise(row)) for row in matrix],
                prediction["tags"],
                cut,
            )
        )
    return out


# -- encoder-decoders -----------------------------------------------------------------------------


def explain_seq2seq(
    model, texts, method: str = "attention", beam: int = 5, truncate: bool = False
) -> list[Explanation]:
    """``EncoderDecoder.explain``: the best output (beam search) and, per output token, the decoder's
    attention over the source tokens (``alignment``, each row sums to 1); ``scores`` is the
    attention each source token received, averaged over the output tokens."""
    texts = _texts(texts)
    no_attention = model.bundle.manifest["architecture"]["attention"] == "none"
    works = {
        "attention": "it was trained with attention='none', so its decoder weights no source token"
        if no_attention
        else None,
        "occlusion": "occlusion explains classifiers and taggers; an encoder-decoder's output changes "
        "length and tokens when a source token is replaced",
    }
    method = check_method(method, works, "encoder-decoder bundle")
    sources, dropped = model._encode_sources(texts, truncate)
    found = model.nbest(texts, 1, beam=beam, truncate=truncate)
    from .manifest import Seq2SeqIO

    steps = model._steps
    out = []
    for text, ids, cut, (best, *_) in zip(texts, sources, dropped, found):
        targets = best.tokens
        target_ids = [steps.bos_id] + [model.target_tokenizer.token_id(t) for t in targets]
        rows = steps.encode([ids])
        run = steps.decoder(
            {Seq2SeqIO.input_ids: np.asarray([target_ids], dtype=np.int64), **rows.state, **rows.context}
        )
        # row k: the attention while predicting output token k (its input is token k - 1, or <s>)
        alignment = np.asarray(run[Seq2SeqIO.attention], dtype=np.float64)[0, : len(targets), : len(ids)]
        raw = alignment.mean(axis=0) if len(targets) else np.zeros(len(ids))
        tokens = model.tokenizer.tokenize(text)[: len(ids)]
        prediction = {"output": best.output, "score": best.score, "log_prob": best.log_prob}
        out.append(
            Explanation(
                text,
                tokens,
                _floats(normalise(raw)),
                method,
                prediction,
                _floats(raw),
                [_floats(row) for row in alignment],
                list(targets),
                cut,
            )
        )
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _floats(values) -> list[float]:
    return [float(x) for x in np.asarray(values).reshape(-1)]
