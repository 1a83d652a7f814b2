"""Training checkpoints of every task: a directory with ``config.json``, ``weights.pt`` and ``curves.png``.

``config.json`` holds everything needed to rebuild the model and its tokenizer(s) (format
name and version, task, architecture config under ``model``, tokenizer, labels / tags /
charset / target tokenizer, training record); ``weights.pt`` is a plain ``state_dict`` saved
with ``torch.save`` and read back with ``torch.load(weights_only=True)``, so loading a
checkpoint never unpickles arbitrary objects.  Writes are atomic: everything goes to a
temporary sibling directory that is renamed into place only when complete, so an interrupted
run never leaves a half-written checkpoint.  Problems with a checkpoint on disk raise
``BundleError`` naming the file and key.

``write_checkpoint``, ``read_checkpoint`` (``read_checkpoint_config`` + ``model_config``),
``raise_inconsistent`` and ``load_weights`` serve every task; each task has its
``save_*_checkpoint`` / ``load_*_checkpoint`` pair here, and ``load_any_checkpoint`` reads
whichever task a folder holds (``rnnkit export``).  While a run trains, the folder also holds
``resume/state.pt`` (``rnnkit.toolkit.resume``).

Imports torch; never imported by ``rnnkit.runtime``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rnnkit.export.architecture import ClassifierConfig, LMConfig, Seq2SeqConfig, TaggerConfig
from rnnkit.export.nets import RecurrentClassifier, RecurrentLM, RecurrentTagger, Seq2Seq
from rnnkit.runtime.charset import CharVocab
from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.runtime.tokenizer import BOS_ID, EOS_ID, TARGET_SPECIALS, WordTokenizer, tokenizer_from_dict
from rnnkit.toolkit.pairs import write_pairs
from rnnkit.toolkit.seq2seq import Tokenizer, decode_texts
from rnnkit.toolkit.tag_metrics import confusion_table
from rnnkit.toolkit.tagger import predict_tag_ids

FORMAT = "rnnkit-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
CURVES_FILE = "curves.png"
REQUIRED_KEYS = ("format", "format_version", "task", "model", "tokenizer")
RESUME_DIR = "resume"  # out/resume/state.pt: only while a run is in progress (or was killed)
STATE_FILE = "state.pt"
STATE_FORMAT = "rnnkit-resume-state-1"
CONFUSION_PNG, CONFUSION_TSV = "confusion.png", "confusion.tsv"  # tagger: the best epoch's dev confusion
DEV_FILE = "dev.tsv"  # seq2seq: the dev pairs used, so later scripts can evaluate
TASK_KEYS = {"classify": ("labels",), "tag": ("charset", "tags"), "lm": (), "seq2seq": ("target_tokenizer",)}
# ^ checked once 'task' is known


@dataclass
class Checkpoint:
    model: RecurrentClassifier  # in eval mode
    config: ClassifierConfig
    tokenizer: WordTokenizer
    labels: list[str]  # label id i -> labels[i]
    meta: dict  # the whole config.json (training record under "training")
    path: Path

    @torch.no_grad()
    def logits(self, texts: list[str], max_length: int | None = None) -> "np.ndarray":
        """float32 (B, num_labels); raises InputError naming an item with no tokens."""
        ids, lengths = self.tokenizer.encode_batch(texts, max_length=max_length)
        return self.model(torch.from_numpy(ids), torch.from_numpy(lengths).long()).numpy()

    def predict(self, texts: list[str]) -> list[str]:
        return [self.labels[i] for i in self.logits(texts).argmax(axis=1)]


@dataclass
class TagCheckpoint:
    model: RecurrentTagger  # eval mode
    config: TaggerConfig
    tokenizer: WordTokenizer
    charset: CharVocab | None  # None without character features
    tags: list[str]  # tag id i -> tags[i]
    meta: dict  # the whole config.json
    path: Path

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        return [
            [self.tags[i] for i in row] for row in predict_tag_ids(self.model, self.tokenizer, self.charset, sentences)
        ]


@dataclass
class LMCheckpoint:
    model: RecurrentLM  # eval mode
    config: LMConfig
    tokenizer: Tokenizer
    meta: dict
    path: Path


@dataclass
class Seq2SeqCheckpoint:
    model: Seq2Seq  # eval mode
    config: Seq2SeqConfig
    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    meta: dict  # the whole config.json
    path: Path

    def translate(self, sources: Sequence[str], max_len: int | None = None) -> list[str]:
        """Greedy outputs (in the target tokenizer's form) of ``sources``, in order."""
        return decode_texts(self.model, self.source_tokenizer, self.target_tokenizer, sources, max_len)


def is_checkpoint(path) -> bool:
    cfg = Path(path) / CONFIG_FILE
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out_dir) -> Path:
    """Refuse a target that exists and is not a checkpoint (call before a long training run)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is a file, not a checkpoint directory -- choose another output path")
    if out.is_dir() and any(out.iterdir()) and not is_checkpoint(out):
        raise InputError(
            f"{out}: exists and is not an rnnkit checkpoint (no {CONFIG_FILE} with "
            f"format {FORMAT!r}); refusing to overwrite it -- choose another output "
            "path or delete the folder"
        )
    return out


def save_checkpoint(
    out_dir,
    model: RecurrentClassifier,
    tokenizer: WordTokenizer,
    labels: list[str],
    training: dict | None = None,
    plot: bool = True,
    resume: dict | None = None,
) -> Path:
    """Write ``out_dir`` atomically; replaces an existing checkpoint, refuses anything else.

    ``training`` is stored as is (must be JSON-serialisable); when it has a non-empty
    ``history`` list and ``plot`` is true, ``curves.png`` is drawn from it.  ``resume``: the
    state of a run in progress (``loop.fit``), written as ``resume/state.pt``.
    """
    config = model.config
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} entries but model vocab_size is {config.vocab_size}")
    if len(labels) != config.num_labels:
        raise ValueError(f"{len(labels)} labels but model num_labels is {config.num_labels}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "classify",
        "model": config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "labels": list(labels),
        "training": training or {},
    }
    return write_checkpoint(out_dir, meta, model.state_dict(), plot=plot, resume=resume)


def write_checkpoint(
    out_dir,
    meta: dict,
    state_dict: dict,
    plot: bool = True,
    extras: Callable[[Path], None] | None = None,
    resume: dict | None = None,
    plot_gradients: bool | None = None,
) -> Path:
    """Write ``config.json`` (``meta``), ``weights.pt`` (``state_dict``), ``curves.png`` (when
    ``plot`` and ``meta["training"]`` has a history), ``gradients.jsonl`` (the training record's
    per-step gradient list, taken out of config.json) with ``gradients.png`` (when ``plot``, or
    ``plot_gradients`` for the tasks that draw their curves in ``extras``),
    whatever ``extras(tmp_dir)`` writes and,
    with ``resume``, ``resume/state.pt``, all into a temporary sibling that replaces ``out_dir``
    only when complete (any task)."""
    out = check_out_dir(out_dir).resolve()
    # the per-step gradient records (loop.training_record) go to their own JSON lines file, not config.json
    from rnnkit.toolkit.gradients import GRADIENTS_FILE, GRADIENTS_PNG, STEPS_KEY, jsonl

    steps = (meta.get("training") or {}).get(STEPS_KEY)
    if steps is not None:
        meta = {**meta, "training": {k: v for k, v in meta["training"].items() if k != STEPS_KEY}}
    if resume is not None:
        # marked here, with the state it describes, so the two can never disagree
        meta = {**meta, "training": {**(meta.get("training") or {}), "in_progress": True}}
    text = json.dumps(meta, indent=1, ensure_ascii=False)  # fail before touching the disk
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    try:
        (tmp / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
        torch.save({k: v.detach().cpu().clone() for k, v in state_dict.items()}, tmp / WEIGHTS_FILE)
        history = (meta.get("training") or {}).get("history")
        if plot and history:
            from rnnkit.toolkit.plots import plot_curves

            plot_curves(history, tmp / CURVES_FILE)
        if steps is not None:
            (tmp / GRADIENTS_FILE).write_text(jsonl(steps), encoding="utf-8")
            if (plot if plot_gradients is None else plot_gradients) and steps:
                from rnnkit.toolkit.plots import plot_gradients

                plot_gradients(steps, tmp / GRADIENTS_PNG, clip=meta["training"].get("config", {}).get("clip", 0.0))
        if extras is not None:
            extras(tmp)
        if resume is not None:
            (tmp / RESUME_DIR).mkdir()
            torch.save(resume, tmp / RESUME_DIR / STATE_FILE)
        if out.exists():
            # rename the old checkpoint aside first: the target is never half old, half new
            old = _sibling(out, "old")
            os.replace(out, old / "ckpt")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _sibling(out: Path, kind: str) -> Path:
    """A fresh hidden directory next to ``out`` (same filesystem, so os.replace is atomic);
    mkdir, not mkdtemp, so the checkpoint gets the usual umask permissions, not 0700."""
    while True:
        p = out.parent / f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue


def read_checkpoint_config(path: Path, task: str) -> dict:
    """``path/config.json`` checked for format, version, ``task`` and the keys that task needs."""
    cfg = path / CONFIG_FILE
    if not path.is_dir():
        raise BundleError(f"{path}: no such checkpoint directory -- give the folder written by `rnnkit train`")
    if not cfg.is_file():
        raise BundleError(f"{cfg}: missing -- {path} is not a complete rnnkit checkpoint; retrain or copy it again")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{cfg}: not UTF-8 text ({e.reason} at byte {e.start}) -- the file is corrupted") from None
    except json.JSONDecodeError as e:
        raise BundleError(
            f"{cfg}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}) "
            "-- the file is corrupted; retrain or restore it"
        ) from None
    if not isinstance(meta, dict):
        raise BundleError(f"{cfg}: top level is {type(meta).__name__}, expected an object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise BundleError(f"{cfg}: missing key(s) {', '.join(map(repr, missing))} -- not an rnnkit checkpoint")
    if meta["format"] != FORMAT:
        raise BundleError(f"{cfg}: 'format' is {meta['format']!r}, expected {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{cfg}: 'format_version' is {meta['format_version']!r} but this rnnkit reads "
            f"version {FORMAT_VERSION} -- use the rnnkit version that wrote it, or retrain"
        )
    if meta["task"] != task:
        raise BundleError(f"{cfg}: 'task' is {meta['task']!r}, expected {task!r}")
    missing = [k for k in TASK_KEYS[task] if k not in meta]
    if missing:
        raise BundleError(f"{cfg}: missing key(s) {', '.join(map(repr, missing))} -- not a {task!r} checkpoint")
    return meta


def model_config(meta: dict, cfg: Path, cls):
    """``meta["model"]`` -> an instance of the config dataclass ``cls``, or BundleError naming the key."""
    d = meta["model"]
    if not isinstance(d, dict):
        raise BundleError(f"{cfg}: 'model' is {type(d).__name__}, expected an object")
    names = {f.name for f in fields(cls)}
    unknown = sorted(d.keys() - names)
    if unknown:
        raise BundleError(f"{cfg}: 'model' has unknown key(s) {unknown} (expected {sorted(names)})")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{cfg}: 'model' is invalid: {e}") from None


def read_checkpoint(path, task: str, cls) -> tuple[dict, object, WordTokenizer]:
    """A ``task`` checkpoint's config.json -> (meta, model config of class ``cls``, tokenizer)."""
    path = Path(path)
    meta = read_checkpoint_config(path, task)
    cfg = path / CONFIG_FILE
    return meta, model_config(meta, cfg, cls), tokenizer_from_dict(meta["tokenizer"], source=str(cfg))


def raise_inconsistent(path, problems: list[str], tokenizer: WordTokenizer, config) -> None:
    """Add the tokenizer-size check to a task's own ``problems``; raise them all as one BundleError."""
    if tokenizer.vocab_size != config.vocab_size:
        problems.append(
            f"'tokenizer.vocab' has {tokenizer.vocab_size} entries but 'model.vocab_size' is {config.vocab_size}"
        )
    if problems:
        raise BundleError(
            f"{Path(path) / CONFIG_FILE}: " + "; ".join(problems) + " -- the checkpoint is inconsistent; retrain it"
        )


def load_checkpoint(path) -> Checkpoint:
    meta, config, tokenizer = read_checkpoint(path, "classify", ClassifierConfig)
    labels = meta["labels"]
    problems = []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        problems.append(f"'labels' is {labels!r}, expected a list of strings")
    elif len(labels) != config.num_labels:
        problems.append(f"'labels' has {len(labels)} entries but 'model.num_labels' is {config.num_labels}")
    raise_inconsistent(path, problems, tokenizer, config)
    model = load_weights(
        Path(path), RecurrentClassifier(config), {"embedding.weight": "vocab_size", "head.weight": "num_labels"}
    )
    return Checkpoint(model, config, tokenizer, list(labels), meta, Path(path))


def load_weights(path: Path, model: torch.nn.Module, rows: dict[str, str]) -> torch.nn.Module:
    """Load ``path/weights.pt`` into ``model`` (returned in eval mode).  ``rows``: tensor key ->
    the ``model.*`` config field its row count comes from, named when the two disagree."""
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{weights}: missing -- the checkpoint is incomplete; retrain or copy it again")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a corrupted / unsafe file
        raise BundleError(
            f"{weights}: cannot be read as a plain state_dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}) -- the file is corrupted or "
            "was not written by rnnkit"
        ) from None
    if not isinstance(state, dict):
        raise BundleError(f"{weights}: holds {type(state).__name__}, expected a state_dict")
    _check_state(state, model.state_dict(), weights, model.config, rows)
    model.load_state_dict(state)
    model.eval()
    return model


def _check_state(state: dict, expected: dict, weights: Path, config, rows: dict[str, str]) -> None:
    """Collect every missing / unexpected / wrongly shaped tensor before raising."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    for k, ref in expected.items():
        got = state.get(k)
        if got is None or not isinstance(got, torch.Tensor):
            continue
        if tuple(got.shape) != tuple(ref.shape):
            if k in rows and got.shape[0] != ref.shape[0]:
                problems.append(
                    f"{k!r} has {got.shape[0]} rows but config.json 'model.{rows[k]}' is {getattr(config, rows[k])}"
                )
            else:
                problems.append(f"{k!r} has shape {tuple(got.shape)} but config.json implies {tuple(ref.shape)}")
    if problems:
        raise BundleError(
            f"{weights}: does not match {CONFIG_FILE}: "
            + "; ".join(problems)
            + " -- weights and config come from different runs; retrain or restore both"
        )


# -- per task ---------------------------------------------------------------------------------


def save_tagger_checkpoint(
    out_dir,
    model: RecurrentTagger,
    tokenizer: WordTokenizer,
    charset: CharVocab | None,
    tags: list[str],
    training: dict | None = None,
    plot: bool = True,
    resume: dict | None = None,
) -> Path:
    """Write ``out_dir`` atomically (``rnnkit.toolkit.checkpoint.write_checkpoint``), adding the
    best epoch's dev confusion as ``confusion.tsv`` (and ``confusion.png`` when plotting);
    ``resume``: the state of a run in progress, written as ``resume/state.pt``."""
    c = model.config
    if tokenizer.vocab_size != c.vocab_size or len(tags) != c.num_tags:
        raise ValueError("tokenizer / tags do not match the model config")
    if (charset is None) == c.use_chars or (charset is not None and charset.size != c.char_vocab_size):
        raise ValueError("charset does not match the model's char_vocab_size")
    training = training or {}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "tag",
        "model": c.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "charset": charset.to_dict() if charset else None,
        "tags": list(tags),
        "training": training,
    }
    dev = training.get("dev", {})

    def confusion(tmp: Path) -> None:
        if "confusion" not in dev:
            return
        (tmp / CONFUSION_TSV).write_text(confusion_table(dev["confusion"], tags), encoding="utf-8")
        if plot and training.get("history"):
            from rnnkit.toolkit.tag_metrics import plot_confusion

            plot_confusion(
                dev["confusion"],
                tags,
                tmp / CONFUSION_PNG,
                title=f"dev, best epoch {training.get('best_epoch')}: accuracy {dev['accuracy']:.4f}",
            )

    return write_checkpoint(out_dir, meta, model.state_dict(), plot=plot, extras=confusion, resume=resume)


def load_tagger_checkpoint(path) -> TagCheckpoint:
    meta, config, tokenizer = read_checkpoint(path, "tag", TaggerConfig)
    source = str(Path(path) / CONFIG_FILE)
    charset = CharVocab.from_dict(meta["charset"], source=source) if meta["charset"] is not None else None
    tags = meta["tags"]
    problems = []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or len(tags) != config.num_tags:
        problems.append(f"'tags' must be a list of {config.num_tags} strings ('model.num_tags')")
    if (charset.size if charset else 0) != config.char_vocab_size:
        problems.append(
            f"'charset.chars' has {charset.size if charset else 0} entries but "
            f"'model.char_vocab_size' is {config.char_vocab_size}"
        )
    raise_inconsistent(path, problems, tokenizer, config)
    rows = {"embedding.weight": "vocab_size", "head.weight": "num_tags", "char_embedding.weight": "char_vocab_size"}
    model = load_weights(Path(path), RecurrentTagger(config), rows)
    return TagCheckpoint(model, config, tokenizer, charset, list(tags), meta, Path(path))


def save_lm_checkpoint(
    out_dir, model: RecurrentLM, tokenizer, training: dict | None = None, plot: bool = True, resume: dict | None = None
) -> Path:
    c = model.config
    if tokenizer.vocab_size != c.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} entries but model vocab_size is {c.vocab_size}")
    training = training or {}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "lm",
        "model": c.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "training": training,
    }

    def curves(tmp: Path) -> None:
        if plot and training.get("history"):
            from rnnkit.toolkit.plots import plot_lm_curves

            plot_lm_curves(training["history"], tmp / CURVES_FILE, unit=training.get("dev", {}).get("unit", "token"))

    return write_checkpoint(
        out_dir, meta, model.state_dict(), plot=False, extras=curves, resume=resume, plot_gradients=plot
    )


def load_lm_checkpoint(path) -> LMCheckpoint:
    meta, config, tokenizer = read_checkpoint(path, "lm", LMConfig)
    raise_inconsistent(path, [], tokenizer, config)
    model = load_weights(
        Path(path), RecurrentLM(config), {"embedding.weight": "vocab_size", "head.weight": "vocab_size"}
    )
    return LMCheckpoint(model, config, tokenizer, meta, Path(path))


def save_seq2seq_checkpoint(
    out_dir,
    model: Seq2Seq,
    source_tokenizer: Tokenizer,
    target_tokenizer: Tokenizer,
    training: dict | None = None,
    dev_pairs: Sequence[tuple[str, str]] | None = None,
    plot: bool = True,
    resume: dict | None = None,
) -> Path:
    c = model.config
    if source_tokenizer.vocab_size != c.source_vocab_size or target_tokenizer.vocab_size != c.target_vocab_size:
        raise ValueError(
            f"tokenizers have {source_tokenizer.vocab_size} / {target_tokenizer.vocab_size} entries "
            f"but the model's vocab sizes are {c.source_vocab_size} / {c.target_vocab_size}"
        )
    training = training or {}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "seq2seq",
        "model": c.to_dict(),
        "tokenizer": source_tokenizer.to_dict(),
        "target_tokenizer": target_tokenizer.to_dict(),
        "training": training,
    }

    def extras(tmp: Path) -> None:
        if dev_pairs is not None:
            write_pairs(tmp / DEV_FILE, dev_pairs)
        if plot and training.get("history"):
            from rnnkit.toolkit.plots import plot_curves

            best = training.get("dev", {})
            plot_curves(
                training["history"],
                tmp / CURVES_FILE,
                title=f"best epoch {training.get('best_epoch')}: dev exact match "
                f"{best.get('accuracy', float('nan')):.4f}, token err "
                f"{best.get('token_error_rate', float('nan')):.4f}",
            )

    return write_checkpoint(
        out_dir, meta, model.state_dict(), plot=False, extras=extras, resume=resume, plot_gradients=plot
    )


def load_seq2seq_checkpoint(path) -> Seq2SeqCheckpoint:
    """A ``train_seq2seq`` checkpoint -> model (eval mode), config, both tokenizers, config.json."""
    path = Path(path)
    meta, config, src_tok = read_checkpoint(path, "seq2seq", Seq2SeqConfig)
    cfg = path / CONFIG_FILE
    tgt_tok = tokenizer_from_dict(meta["target_tokenizer"], source=f"{cfg} (target_tokenizer)")
    problems = []
    if src_tok.vocab_size != config.source_vocab_size:
        problems.append(
            f"'tokenizer.vocab' has {src_tok.vocab_size} entries but 'model.source_vocab_size' "
            f"is {config.source_vocab_size}"
        )
    if tgt_tok.vocab_size != config.target_vocab_size:
        problems.append(
            f"'target_tokenizer.vocab' has {tgt_tok.vocab_size} entries but "
            f"'model.target_vocab_size' is {config.target_vocab_size}"
        )
    specials = tgt_tok.vocab[: len(TARGET_SPECIALS)]
    if specials != list(TARGET_SPECIALS) or (config.bos_id, config.eos_id) != (BOS_ID, EOS_ID):
        problems.append(
            f"'target_tokenizer.vocab' starts {specials} with bos_id/eos_id "
            f"{config.bos_id}/{config.eos_id}, expected {list(TARGET_SPECIALS)} and {BOS_ID}/{EOS_ID}"
        )
    if problems:
        raise BundleError(f"{cfg}: " + "; ".join(problems) + " -- the checkpoint is inconsistent; retrain it")
    model = load_weights(
        path,
        Seq2Seq(config),
        {
            "source_embedding.weight": "source_vocab_size",
            "target_embedding.weight": "target_vocab_size",
            "head.weight": "target_vocab_size",
        },
    )
    return Seq2SeqCheckpoint(model, config, src_tok, tgt_tok, meta, path)


def checkpoint_task(checkpoint) -> str:
    """The task a checkpoint folder holds ("classify" when its config.json predates tasks)."""
    path = Path(checkpoint) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("task", "classify")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; {checkpoint} is not an rnnkit checkpoint directory") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); the checkpoint is corrupted, retrain it") from None


def load_any_checkpoint(path):
    """The checkpoint at ``path``, whichever task it holds (``checkpoint_task``)."""
    return LOADERS[checkpoint_task(path)](path)


LOADERS = {
    "classify": load_checkpoint,
    "tag": load_tagger_checkpoint,
    "lm": load_lm_checkpoint,
    "seq2seq": load_seq2seq_checkpoint,
}
