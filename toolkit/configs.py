"""Training configuration dataclasses, one per ``rnnkit train`` task (torch-free).

Kept apart from ``train*.py`` so the CLI can show defaults without importing torch.  The
architecture configs (``ClassifierConfig`` ...) live in ``rnnkit.export.architecture``, read by
training and export alike; they are re-exported here for the CLI's choices.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..export.architecture import ATTENTIONS as ATTENTIONS
from ..export.architecture import CELL_TYPES as CELL_TYPES
from ..export.architecture import POOLINGS as POOLINGS
from ..export.architecture import ClassifierConfig as ClassifierConfig
from ..export.architecture import LMConfig as LMConfig
from ..export.architecture import Seq2SeqConfig as Seq2SeqConfig

# torch CPU threads of a training run when --threads is 0 (every task's default): the CPUs no other
# work is using right now, between 1 and MAX_TRAIN_THREADS.  Measured with benchmarks/train_threads.py
# (MR classifier, the README's quick-start flags, a 2-core machine): idle, 2 threads 12.3 s/epoch vs
# 18.7 s with 1; with the other core busy, 2 threads 124.9-252.6 s vs 16.8-19.2 s with 1 (each thread
# waits for a core at every small matrix product).  The cap of 4 is not measured here (2 cores):
# beyond it these small matrix products have little left to split.
MAX_TRAIN_THREADS = 4
THREADS_HELP = (
    f"torch CPU threads (0: the CPUs idle at start, 1 to {MAX_TRAIN_THREADS}; extra threads on busy "
    f"CPUs make training many times slower, see benchmarks/train_threads.py)."
)


def busy_cpus(interval: float = 0.2) -> float:
    """How many CPUs other work keeps busy now: Linux ``/proc/stat`` read twice ``interval`` apart;
    elsewhere the 1-minute load average (which lags: a job that just ended still counts), or 0.

    Why now and not the load average: a run started right after another one ended would see the
    finished run's load for a minute and leave a core unused."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        (busy0, total0), _ = sample(), time.sleep(interval)
        busy1, total1 = sample()
        share = (busy1 - busy0) / max(1, total1 - total0)
        return share * (os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows: no load average either
            return 0.0


def train_threads(threads: int, cpus: int | None = None, busy: float | None = None) -> int:
    """The torch thread count of a run: ``threads``, or for 0 the CPUs (``os.cpu_count()``) minus the
    busy ones (``busy_cpus()``), rounded, between 1 and ``MAX_TRAIN_THREADS``."""
    if threads:
        return threads
    cpus = cpus or os.cpu_count() or 1
    busy = busy_cpus() if busy is None else busy
    return max(1, min(MAX_TRAIN_THREADS, cpus - round(busy)))


def _max_chars() -> int:
    # read at construction, not import: ``rnnkit --help`` must not import the runtime (numpy)
    from ..runtime.charset import MAX_CHARS

    return MAX_CHARS


def refuse(problems: list[str]) -> None:
    """Every problem of a training configuration in one ``InputError``."""
    if problems:
        from ..runtime.errors import InputError

        raise InputError("invalid training configuration: " + "; ".join(problems))


NONFINITE = ("stop", "skip")  # what training does at a non-finite loss or gradient (toolkit.gradients)


DISTILL_MIXES = ("keep-references", "replace")  # seq2seq: the teacher's outputs beside the references, or instead


def distill_problems(config) -> list[str]:
    """The checks of the distillation and process options a config has."""
    problems = []
    if getattr(config, "nproc", 1) < 1:
        problems.append(f"nproc must be >= 1, got {config.nproc}")
    if getattr(config, "distill_temperature", 1.0) <= 0:
        problems.append(f"distill_temperature must be > 0, got {config.distill_temperature}")
    if not 0.0 <= getattr(config, "distill_alpha", 0.0) <= 1.0:
        problems.append(f"distill_alpha must be in [0, 1], got {config.distill_alpha}")
    if getattr(config, "distill_beam", 1) < 1:
        problems.append(f"distill_beam must be >= 1, got {config.distill_beam}")
    if getattr(config, "distill_mix", DISTILL_MIXES[0]) not in DISTILL_MIXES:
        problems.append(f"distill_mix must be one of {list(DISTILL_MIXES)}, got {config.distill_mix!r}")
    return problems


def range_problems(config, at_least_one=(), fractions=(), non_negative=()) -> list[str]:
    """The usual numeric checks of a training configuration, one message per bad field."""
    problems = [f"{n} must be >= 1, got {getattr(config, n)}" for n in at_least_one if getattr(config, n) < 1]
    problems += [
        f"{n} must be in [0, 1), got {getattr(config, n)}" for n in fractions if not 0.0 <= getattr(config, n) < 1.0
    ]
    problems += [f"{n} must be >= 0, got {getattr(config, n)}" for n in non_negative if getattr(config, n) < 0]
    if config.lr <= 0:
        problems.append(f"lr must be > 0, got {config.lr}")
    if getattr(config, "on_nonfinite", "stop") not in NONFINITE:
        problems.append(f"on_nonfinite must be one of {list(NONFINITE)}, got {config.on_nonfinite!r}")
    return problems


@dataclass
class TrainConfig:
    # model
    cell: str = "gru"  # rnn | lstm | gru
    layers: int = 1  # stacked recurrent layers
    hidden: int = 128  # recurrent state width per direction
    embed: int = 128  # word embedding width (trained from scratch, no pretrained vectors)
    bidirectional: bool = True  # read the sentence both ways (doubles the pooled width)
    pooling: str = "max"  # last | mean | max | attention: how T states become one vector
    dropout: float = 0.5  # on embeddings, between layers and before the head
    word_dropout: float = 0.0  # training only: replace this fraction of tokens by <unk>
    # optimisation
    epochs: int = 10  # maximum number of passes over the training set
    patience: int = 0  # stop after this many epochs without a better dev accuracy (0: never)
    batch_size: int = 32
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 penalty
    clip: float = 5.0  # max gradient L2 norm (RNNs' exploding gradients, Pascanu et al. 2013); 0: off
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that step
    seed: int = 0  # seeds python, numpy, torch, the dev split and the batch order
    threads: int = 0  # torch CPU threads; 0: train_threads' default
    # data and vocabulary
    lowercase: bool = True  # tokenizer lower-cases (after NFKC)
    max_vocab: int = 20000  # vocabulary size including <pad> and <unk>
    min_freq: int = 1  # drop tokens seen fewer times in the training split
    dev_split: float = 0.1  # fraction of TRAIN held out (stratified) when no dev file is given
    text_field: str = "text"  # CSV/TSV column or JSONL key of the text
    label_field: str = "label"  # CSV/TSV column or JSONL key of the label
    encoding: str = "utf-8"  # text encoding of the data files
    max_length: int = 0  # truncate longer texts to this many tokens (0: no limit)
    # knowledge distillation (toolkit.distill; Hinton et al. 2015) and processes (toolkit.ddp)
    teacher: str = ""  # a classify checkpoint or bundle whose soft targets the model also learns
    distill_temperature: float = 2.0  # softmax temperature of the teacher's and the student's targets
    distill_alpha: float = 0.5  # weight of the soft-target loss (1 - alpha: the labels' cross-entropy)
    nproc: int = 1  # training processes on this machine (DistributedDataParallel, gloo)

    def __post_init__(self):
        problems = distill_problems(self)
        if self.cell not in CELL_TYPES:
            problems.append(f"cell must be one of {sorted(CELL_TYPES)}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        problems += range_problems(
            self,
            ("layers", "hidden", "embed", "epochs", "batch_size", "min_freq"),
            ("dropout", "word_dropout"),
            ("patience", "threads", "max_length", "clip", "weight_decay"),
        )
        if self.max_vocab < 3:
            problems.append(f"max_vocab must be >= 3 (<pad>, <unk> and one word), got {self.max_vocab}")
        refuse(problems)


@dataclass
class TagTrainConfig:
    # model (same options as `train classify`, plus character features)
    cell: str = "lstm"  # rnn | lstm | gru
    layers: int = 1  # stacked recurrent layers
    hidden: int = 128  # recurrent state width per direction
    embed: int = 100  # word embedding width (from scratch)
    bidirectional: bool = True  # a tagger needs the right context
    dropout: float = 0.33  # on token features, between layers and before the head
    word_dropout: float = 0.05  # training only: replace this fraction of words by <unk> (chars kept)
    unk_alpha: float = 0.0  # training only: also replace a word seen n times by <unk> with
    # probability alpha / (alpha + n) (Kiperwasser & Goldberg 2016): rare words
    chars: bool = True  # character CNN features per word
    char_embed: int = 32  # char embedding width
    char_filters: int = 64  # char CNN channels
    char_kernel: int = 3  # char CNN window (odd)
    max_chars: int = field(default_factory=_max_chars)  # characters kept per word (first + last halves)
    # optimisation
    epochs: int = 10
    patience: int = 0  # stop after this many epochs without better dev accuracy (0: never)
    batch_size: int = 32  # sentences per batch
    lr: float = 2e-3  # Adam learning rate
    weight_decay: float = 0.0
    clip: float = 5.0  # max gradient L2 norm; 0: off
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that step
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: train_threads' default
    # data and vocabulary
    column: str = "upos"  # CoNLL-U tag column: upos | xpos
    lowercase: bool = True  # word lookup lower-cases (case reaches the model through the chars)
    max_vocab: int = 50000  # word vocabulary size including <pad> and <unk>
    min_freq: int = 1  # drop words seen fewer times in training
    dev_split: float = 0.1  # fraction of TRAIN sentences held out when no dev file is given
    encoding: str = "utf-8"
    nproc: int = 1  # training processes on this machine (DistributedDataParallel, gloo)

    def __post_init__(self):
        problems = distill_problems(self)
        if self.cell not in CELL_TYPES:
            problems.append(f"cell must be one of {sorted(CELL_TYPES)}, got {self.cell!r}")
        problems += range_problems(
            self,
            (
                "layers",
                "hidden",
                "embed",
                "epochs",
                "batch_size",
                "min_freq",
                "max_chars",
                "char_embed",
                "char_filters",
            ),
            ("dropout", "word_dropout"),
            ("patience", "threads", "clip", "weight_decay", "unk_alpha"),
        )
        if self.char_kernel < 1 or self.char_kernel % 2 == 0:
            problems.append(f"char_kernel must be odd and >= 1, got {self.char_kernel}")
        if self.max_vocab < 3:
            problems.append(f"max_vocab must be >= 3, got {self.max_vocab}")
        if self.column not in ("upos", "xpos"):
            problems.append(f"column must be upos or xpos, got {self.column!r}")
        if not 0.0 < self.dev_split < 1.0:
            problems.append(f"dev_split must be in (0, 1), got {self.dev_split}")
        refuse(problems)


LR_SCHEDULES = ("constant", "cosine")
# a language model may also decay its rate when the dev loss stops falling (Zaremba et al. 2014 decay
# on a fixed epoch; on plateau adapts that to any corpus size without a per-corpus epoch to tune)
LM_LR_SCHEDULES = (*LR_SCHEDULES, "plateau")
LM_TOKENIZERS = ("words", "whitespace")  # word level: rnnkit's regex splitter | a pre-tokenized corpus's fields


@dataclass
class LMTrainConfig:
    # model
    level: str = "char"  # char | word tokens
    cell: str = "lstm"  # rnn | lstm | gru
    layers: int = 2  # stacked recurrent layers
    hidden: int = 512  # recurrent state width
    embed: int = 128  # token embedding width
    dropout: float = 0.2  # on embeddings, between layers and before the head
    tie_weights: bool = False  # the head's weights are the embedding's (Press & Wolf 2017; embed == hidden)
    # optimisation: truncated BPTT over `batch_size` parallel streams of the text, state carried
    epochs: int = 5  # passes over the training text
    patience: int = 0  # stop after this many epochs without a lower dev loss (0: never)
    batch_size: int = 32  # parallel streams (the text is cut into this many contiguous rows)
    bptt: int = 128  # tokens per truncated-backprop window; the state crosses windows, gradients do not
    lr: float = 2e-3  # Adam learning rate
    lr_schedule: str = "constant"  # constant | cosine (decays to lr/10 by the last step: lower final loss)
    # | plateau (multiply the rate by lr_decay after each epoch without a lower dev loss)
    lr_decay: float = 0.25  # plateau only
    weight_decay: float = 0.0
    clip: float = 1.0  # max gradient L2 norm (exploding gradients); 0: off
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that step
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: train_threads' default
    max_train_tokens: int = 0  # use only the first N training tokens (quick runs; 0: all)
    # data and vocabulary
    tokenizer: str = "words"  # word level: words (rnnkit's splitter) | whitespace (pre-tokenized corpora)
    unk_token: str = "<unk>"  # whitespace: the corpus's unknown-word token, read as the model's <unk>
    eos_per_line: bool = True  # whitespace: one end-of-line token (<eos>) per line, as PTB readers count
    lowercase: bool = False  # word level, words tokenizer only (characters keep their case)
    max_vocab: int = 10000  # word level: vocabulary size including <pad> and <unk> (whitespace:
    # the corpus's types, its unk and end-of-line tokens included; <pad> is extra)
    min_freq: int = 1  # word level: drop words seen fewer times
    dev_split: float = 0.1  # without --dev: the last fraction of TRAIN (by position) is dev
    encoding: str = "utf-8"

    def __post_init__(self):
        problems = []
        if self.level not in ("char", "word"):
            problems.append(f"level must be char or word, got {self.level!r}")
        if self.lr_schedule not in LM_LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {list(LM_LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 < self.lr_decay <= 1.0:
            problems.append(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.tokenizer not in LM_TOKENIZERS:
            problems.append(f"tokenizer must be one of {list(LM_TOKENIZERS)}, got {self.tokenizer!r}")
        if self.tokenizer == "whitespace" and self.level != "word":
            problems.append("tokenizer whitespace splits words: give level word (--level word)")
        if self.tokenizer == "whitespace" and self.lowercase:
            problems.append("tokenizer whitespace keeps the corpus's tokens as they are: drop lowercase")
        if not self.unk_token or len(self.unk_token.split()) != 1:
            problems.append(f"unk_token must be one token without whitespace, got {self.unk_token!r}")
        elif self.tokenizer == "whitespace" and self.eos_per_line and self.unk_token == "<eos>":
            problems.append("unk_token cannot be <eos>, the end-of-line token (--eos-per-line)")
        if self.tie_weights and self.embed != self.hidden:
            problems.append(
                f"tie_weights shares the embedding with the head, so embed must equal hidden: got embed "
                f"{self.embed}, hidden {self.hidden} (e.g. --embed {self.hidden})"
            )
        if self.cell not in CELL_TYPES:
            problems.append(f"cell must be one of {sorted(CELL_TYPES)}, got {self.cell!r}")
        problems += range_problems(
            self,
            ("layers", "hidden", "embed", "epochs", "batch_size", "bptt", "min_freq"),
            ("dropout",),
            ("patience", "threads", "clip", "weight_decay", "max_train_tokens"),
        )
        if self.max_vocab < 3:
            problems.append(f"max_vocab must be >= 3, got {self.max_vocab}")
        if not 0.0 < self.dev_split < 1.0:
            problems.append(f"dev_split must be in (0, 1), got {self.dev_split}")
        refuse(problems)


LEVELS = ("char", "word")
BEST_BY = ("accuracy", "bleu", "loss")


@dataclass
class Seq2SeqTrainConfig:
    # tokens (defaults: grapheme-to-phoneme, lower-cased letters in, phones with their case out)
    source_level: str = "char"  # char | word
    target_level: str = "word"  # char | word (CMUdict phones are space-separated words)
    source_lowercase: bool = True
    target_lowercase: bool = False
    # model (Seq2SeqConfig)
    cell: str = "lstm"  # rnn | lstm | gru, encoder and decoder alike
    layers: int = 2  # encoder and decoder layers
    hidden: int = 256  # decoder width = encoder memory width (hidden // 2 per direction)
    embed: int = 128  # source and target embedding width
    bidirectional: bool = True  # encoder only
    attention: str = "dot"  # none | additive | dot
    dropout: float = 0.3  # embeddings, between layers, before the head
    # optimisation
    teacher_forcing: float = 1.0  # chance of feeding the reference token; 1: one parallel decoder call,
    # < 1: scheduled sampling (Bengio et al. 2015), a slower step loop
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0: plain)
    epochs: int = 10
    patience: int = 0  # stop after this many epochs without a better dev result (0: never)
    batch_size: int = 64  # pairs per batch (bucketed by source length)
    lr: float = 2e-3  # Adam learning rate
    lr_schedule: str = "cosine"  # constant | cosine (decays to lr/10 by the last step)
    weight_decay: float = 0.0
    clip: float = 1.0  # max gradient L2 norm; 0: off
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that step
    seed: int = 0  # seeds python, numpy, torch, the dev split and the batch order
    threads: int = 0  # torch CPU threads; 0: train_threads' default
    best_by: str = "accuracy"  # dev criterion of the best epoch: accuracy (exact match with any
    # reference, greedy) | bleu | loss (teacher-forced cross-entropy)
    dev_decode: int = 0  # greedy-decode only the first N dev sources each epoch (0: all)
    # data and vocabulary
    max_source_len: int = 0  # drop training pairs with longer sources, in tokens (0: no limit)
    max_target_len: int = 0  # drop training pairs with longer targets, in tokens (0: no limit)
    source_max_vocab: int = 30000  # word level: entries including the specials
    target_max_vocab: int = 30000
    min_freq: int = 1  # word level: drop tokens seen fewer times in training
    dev_split: float = 0.05  # without a dev file: share of TRAIN's sources held out (grouped)
    encoding: str = "utf-8"
    init: str = ""  # fine-tune: start from this seq2seq checkpoint's weights, tokenizers and
    # architecture (the model options above are then taken from it)
    # sequence-level distillation (toolkit.distill; Kim & Rush 2016) and processes (toolkit.ddp)
    teacher: str = ""  # a seq2seq checkpoint or bundle whose beam outputs become training targets
    distill_beam: int = 5  # the teacher's beam width
    distill_int8: bool = False  # decode with the teacher bundle's int8 graphs (faster; its outputs may differ)
    distill_mix: str = "keep-references"  # keep-references: the references and the teacher's outputs;
    # replace: the teacher's outputs only
    nproc: int = 1  # training processes on this machine (DistributedDataParallel, gloo)

    def __post_init__(self):
        problems = distill_problems(self)
        if self.nproc > 1 and self.teacher_forcing < 1.0:
            problems.append(
                "teacher_forcing below 1 (scheduled sampling) steps the decoder outside DDP's forward pass: "
                "train it with nproc 1"
            )
        for name, allowed in (
            ("source_level", LEVELS),
            ("target_level", LEVELS),
            ("cell", CELL_TYPES),
            ("attention", ATTENTIONS),
            ("lr_schedule", LR_SCHEDULES),
            ("best_by", BEST_BY),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        problems += range_problems(
            self,
            ("layers", "hidden", "embed", "epochs", "batch_size", "min_freq"),
            ("dropout", "label_smoothing"),
            ("patience", "threads", "clip", "weight_decay", "max_source_len", "max_target_len", "dev_decode"),
        )
        if not 0.0 < self.teacher_forcing <= 1.0:
            problems.append(f"teacher_forcing must be in (0, 1], got {self.teacher_forcing}")
        if self.bidirectional and self.hidden % 2:
            problems.append(
                f"hidden must be even with a bidirectional encoder (hidden // 2 per direction), got {self.hidden}"
            )
        for name in ("source_max_vocab", "target_max_vocab"):
            if getattr(self, name) < 5:
                problems.append(f"{name} must be >= 5 (the specials and one token), got {getattr(self, name)}")
        if not 0.0 < self.dev_split < 1.0:
            problems.append(f"dev_split must be in (0, 1), got {self.dev_split}")
        refuse(problems)
