"""The task registry: everything the runtime knows about a task, found by the manifest's ``task``.

One entry per task: the object ``load()`` returns, its graph contract (``rnnkit.runtime.manifest``),
the architecture key sized like ``labels``, the tokenizers and embeddings its graphs read, its head,
its state, the ``rnnkit`` command that runs it and whether the Dask engine runs it.  Code that
used to branch on the task string (``load``, the bundle's contract checks, ``rnnkit predict``,
the Dask engine) reads the entry instead, so adding a task is one entry here, one task class
(``rnnkit.runtime.session.Session`` subclass) and one contract class (docs/architecture.md).

Must not import torch, ``rnnkit.runtime.bundle`` or ``rnnkit.runtime.model`` (both read this).
"""

from __future__ import annotations

from dataclasses import dataclass

from .classifier import Classifier
from .encoder_decoder import EncoderDecoder
from .errors import BundleError
from .language_model import LanguageModel
from .manifest import ClassifierIO, LanguageModelIO, Seq2SeqIO, TaggerIO
from .session import Session
from .tagger import Tagger

# the contract classes share ``files`` and ``graph_io`` (manifest.py): a union lets the checker see both
GraphContract = type[ClassifierIO] | type[TaggerIO] | type[LanguageModelIO] | type[Seq2SeqIO]


@dataclass(frozen=True)
class Head:
    """The output scored over classes, tags or a vocabulary: its width is an architecture key."""

    graph: str  # the graph that computes it
    output: str  # its name in the graph contract
    width: str  # architecture key of its last axis
    per_token: bool  # (batch, time, width) rather than (batch, width)


@dataclass(frozen=True)
class Task:
    cls: type[Session]  # what load() returns for such a bundle
    io: GraphContract  # graph contract: input/output names, graph files (manifest.py)
    labels_key: str | None  # architecture key sized like the manifest's 'labels'; None: no labels
    tokenizers: tuple[tuple[str, str], ...]  # (manifest key, architecture vocabulary size key); the input's first
    embeddings: dict[str, dict[str, str]]  # graph -> {id input it embeds: architecture vocabulary size key}
    head: Head
    state: str | None  # the 'state' section's initial value ("zeros", "encoder"); None: stateless
    forward_only: tuple[str, ...]  # graphs that never run backwards, whatever 'bidirectional' says
    verb: str  # the rnnkit command that runs such a bundle ("predict", "generate")
    dask: bool = False  # rnnkit predict --engine dask runs it (one call per row, no decoding loop)
    token_lists: bool = False  # items may be token lists (--pretokenized, JSONL "tokens")


TASKS: dict[str, Task] = {
    "classify": Task(
        Classifier,
        ClassifierIO,
        "num_labels",
        (("tokenizer", "vocab_size"),),
        {"model": {ClassifierIO.input_ids: "vocab_size"}},
        Head("model", ClassifierIO.logits, "num_labels", False),
        None,
        (),
        "predict",
        dask=True,
    ),
    "tag": Task(
        Tagger,
        TaggerIO,
        "num_tags",
        (("tokenizer", "vocab_size"),),
        {"model": {TaggerIO.input_ids: "vocab_size"}},
        Head("model", TaggerIO.logits, "num_tags", True),
        None,
        (),
        "predict",
        dask=True,
        token_lists=True,
    ),
    "lm": Task(
        LanguageModel,
        LanguageModelIO,
        None,
        (("tokenizer", "vocab_size"),),
        {"model": {LanguageModelIO.input_ids: "vocab_size"}},
        Head("model", LanguageModelIO.logits, "vocab_size", True),
        "zeros",
        ("model",),
        "generate",
    ),
    "seq2seq": Task(
        EncoderDecoder,
        Seq2SeqIO,
        None,
        (("source_tokenizer", "source_vocab_size"), ("target_tokenizer", "target_vocab_size")),
        {"encoder": {Seq2SeqIO.source_ids: "source_vocab_size"}, "decoder": {Seq2SeqIO.input_ids: "target_vocab_size"}},
        Head("decoder", Seq2SeqIO.log_probs, "target_vocab_size", True),
        "encoder",
        ("decoder",),
        "predict",
    ),
}


def task_of(name: str) -> Task:
    """The registry entry of a manifest's ``task`` (``open_bundle`` refuses unknown tasks first)."""
    if name not in TASKS:
        raise BundleError(f"task {name!r} is not one this rnnkit runs ({list(TASKS)}); upgrade rnnkit or re-export")
    return TASKS[name]
