"""Training checkpoints: a directory with ``config.json``, ``weights.pt`` and ``curves.png``.

``config.json`` holds everything needed to rebuild the model and its tokenizer (format
name and version, task, model config, tokenizer, label names, training record);
``weights.pt`` is a plain ``state_dict`` saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so loading a checkpoint never unpickles arbitrary
objects.  Writes are atomic: everything goes to a temporary sibling directory that is
renamed into place only when complete, so an interrupted run never leaves a half-written
checkpoint.  Problems with a checkpoint on disk raise ``BundleError`` naming the file and key.
``write_checkpoint``, ``read_checkpoint`` (``read_checkpoint_config`` + ``model_config``),
``raise_inconsistent`` and ``load_weights`` serve every task; the tagger's ``save_tagger_checkpoint`` (``rnnkit.toolkit.train_tag``) uses them too.

Imports torch (through ``rnnkit.toolkit.models``); never imported by ``rnnkit.runtime``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rnnkit.runtime.errors import BundleError, InputError
from rnnkit.runtime.tokenizer import WordTokenizer, tokenizer_from_dict
from rnnkit.toolkit.models import ClassifierConfig, RecurrentClassifier

FORMAT = "rnnkit-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
CURVES_FILE = "curves.png"
REQUIRED_KEYS = ("format", "format_version", "task", "model", "tokenizer")
TASK_KEYS = {"classify": ("labels",), "tag": ("charset", "tags"), "lm": (), "seq2seq": ("target_tokenizer",)}  # checked once 'task' is known


@dataclass
class Checkpoint:
    model: RecurrentClassifier  # in eval mode
    config: ClassifierConfig
    tokenizer: WordTokenizer
    labels: list[str]           # label id i -> labels[i]
    meta: dict                  # the whole config.json (training record under "training")
    path: Path

    @torch.no_grad()
    def logits(self, texts: list[str], max_length: int | None = None) -> "np.ndarray":
        """float32 (B, num_labels); raises InputError naming an item with no tokens."""
        ids, lengths = self.tokenizer.encode_batch(texts, max_length=max_length)
        return self.model(torch.from_numpy(ids), torch.from_numpy(lengths).long()).numpy()

    def predict(self, texts: list[str]) -> list[str]:
        return [self.labels[i] for i in self.logits(texts).argmax(axis=1)]


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
        raise InputError(f"{out}: exists and is not an rnnkit checkpoint (no {CONFIG_FILE} with "
                         f"format {FORMAT!r}); refusing to overwrite it -- choose another output "
                         "path or delete the folder")
    return out


def save_checkpoint(out_dir, model: RecurrentClassifier, tokenizer: WordTokenizer,
                    labels: list[str], training: dict | None = None, plot: bool = True) -> Path:
    """Write ``out_dir`` atomically; replaces an existing checkpoint, refuses anything else.

    ``training`` is stored as is (must be JSON-serialisable); when it has a non-empty
    ``history`` list and ``plot`` is true, ``curves.png`` is drawn from it.
    """
    config = model.config
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} entries but model vocab_size is {config.vocab_size}")
    if len(labels) != config.num_labels:
        raise ValueError(f"{len(labels)} labels but model num_labels is {config.num_labels}")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": "classify",
            "model": config.to_dict(), "tokenizer": tokenizer.to_dict(), "labels": list(labels),
            "training": training or {}}
    return write_checkpoint(out_dir, meta, model.state_dict(), plot=plot)


def write_checkpoint(out_dir, meta: dict, state_dict: dict, plot: bool = True,
                     extras: Callable[[Path], None] | None = None) -> Path:
    """Write ``config.json`` (``meta``), ``weights.pt`` (``state_dict``), ``curves.png`` (when
    ``plot`` and ``meta["training"]`` has a history) and whatever ``extras(tmp_dir)`` writes,
    all into a temporary sibling that replaces ``out_dir`` only when complete (any task)."""
    out = check_out_dir(out_dir).resolve()
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
        if extras is not None:
            extras(tmp)
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
        raise BundleError(f"{cfg}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}) "
                          "-- the file is corrupted; retrain or restore it") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{cfg}: top level is {type(meta).__name__}, expected an object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise BundleError(f"{cfg}: missing key(s) {', '.join(map(repr, missing))} -- not an rnnkit checkpoint")
    if meta["format"] != FORMAT:
        raise BundleError(f"{cfg}: 'format' is {meta['format']!r}, expected {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{cfg}: 'format_version' is {meta['format_version']!r} but this rnnkit reads "
                          f"version {FORMAT_VERSION} -- use the rnnkit version that wrote it, or retrain")
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
        problems.append(f"'tokenizer.vocab' has {tokenizer.vocab_size} entries but 'model.vocab_size' "
                        f"is {config.vocab_size}")
    if problems:
        raise BundleError(f"{Path(path) / CONFIG_FILE}: " + "; ".join(problems)
                          + " -- the checkpoint is inconsistent; retrain it")


def load_checkpoint(path) -> Checkpoint:
    meta, config, tokenizer = read_checkpoint(path, "classify", ClassifierConfig)
    labels = meta["labels"]
    problems = []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        problems.append(f"'labels' is {labels!r}, expected a list of strings")
    elif len(labels) != config.num_labels:
        problems.append(f"'labels' has {len(labels)} entries but 'model.num_labels' is {config.num_labels}")
    raise_inconsistent(path, problems, tokenizer, config)
    model = load_weights(Path(path), RecurrentClassifier(config),
                         {"embedding.weight": "vocab_size", "head.weight": "num_labels"})
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
        raise BundleError(f"{weights}: cannot be read as a plain state_dict ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}) -- the file is corrupted or "
                          "was not written by rnnkit") from None
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
                problems.append(f"{k!r} has {got.shape[0]} rows but config.json "
                                f"'model.{rows[k]}' is {getattr(config, rows[k])}")
            else:
                problems.append(f"{k!r} has shape {tuple(got.shape)} but config.json implies {tuple(ref.shape)}")
    if problems:
        raise BundleError(f"{weights}: does not match {CONFIG_FILE}: " + "; ".join(problems)
                          + " -- weights and config come from different runs; retrain or restore both")
