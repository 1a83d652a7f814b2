"""Adapt a user's own trained ``nn.Module`` to rnnkit's classifier contract.

Users bring any module built from one ``nn.Embedding``, one ``nn.RNN``/``nn.LSTM``/``nn.GRU``
(batch_first or not), a final ``nn.Linear`` head and weight-free glue (dropout, identity,
containers).  ``config_from_module`` reads sizes, directions, layers and biases from the
modules and returns a ``ClassifierConfig`` plus numpy weights keyed like
``RecurrentClassifier.state_dict()``, ready for ``rnnkit.export.task_classify``.  Anything we cannot
write faithfully (projections, relu RNNs, extra layers, a second recurrent module) raises
``UnsupportedError``: a loud refusal, never a silently different model.  The forward itself is
not read; parity with it is checked by the export validation, and this module helps that
validation speak about the user's code: ``one_direction_hint`` finds out whether only one
direction of a bidirectional module disagrees with the graph.

Imports torch (export side only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from rnnkit.export.architecture import ClassifierConfig
from rnnkit.export.nets import AttentionPooling
from rnnkit.export.oracle import module_path as module_path
from rnnkit.runtime.errors import UnsupportedError

CELL_OF = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}
GLUE = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
)


@dataclass
class ModuleParts:
    """Where the pieces of a user's module are (qualified names from ``named_modules``)."""

    embedding: str  # the nn.Embedding
    rnn: str  # the nn.RNN / nn.LSTM / nn.GRU
    head: str  # the final nn.Linear
    attention: str | None  # an AttentionPooling-like (proj, v) pair, pooling="attention" only
    batch_first: bool  # layout the user's forward feeds the recurrent module
    rnn_bias: bool  # False: biases written as zeros


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _is_attention(m: nn.Module) -> bool:
    if isinstance(m, AttentionPooling):
        return True
    proj, v = getattr(m, "proj", None), getattr(m, "v", None)
    return (
        isinstance(proj, nn.Linear)
        and isinstance(v, nn.Linear)
        and v.out_features == 1
        and v.bias is None
        and proj.in_features == proj.out_features == v.in_features
        and len(list(m.children())) == 2
    )


def find_parts(module: nn.Module, pooling: str = "last") -> ModuleParts:
    """Locate embedding, recurrent module, head (and attention); refuse anything else."""
    name = type(module).__name__
    embeddings, rnns, linears, other = [], [], [], []
    attention = None
    skip: set[str] = set()
    for qual, m in module.named_modules():
        if qual in skip or any(qual.startswith(s + ".") for s in skip):
            continue
        if qual and pooling == "attention" and attention is None and _is_attention(m):
            attention = qual
            skip.add(qual)
        elif isinstance(m, nn.Embedding):
            embeddings.append((qual, m))
        elif isinstance(m, nn.RNNBase):
            rnns.append((qual, m))
        elif isinstance(m, nn.Linear):
            linears.append((qual, m))
        elif qual and not isinstance(m, GLUE):
            other.append(f"{qual} ({type(m).__name__})")
    problems = []
    if len(embeddings) != 1:
        problems.append(f"found {len(embeddings)} nn.Embedding {[q for q, _ in embeddings]}, expected exactly 1")
    if len(rnns) != 1:
        problems.append(
            f"found {len(rnns)} recurrent modules {[q for q, _ in rnns]}, expected exactly 1 nn.RNN/nn.LSTM/nn.GRU"
        )
    if not linears:
        problems.append("found no nn.Linear head; the classifier needs a final nn.Linear")
    elif len(linears) > 1:
        problems.append(
            f"found {len(linears)} nn.Linear {[q for q, _ in linears]} outside attention; rnnkit "
            "writes exactly one head (an MLP head or extra projections are not supported)"
        )
    if pooling == "attention" and attention is None:
        problems.append(
            "pooling='attention' needs an AttentionPooling-like submodule with "
            "proj=nn.Linear(W, W) and v=nn.Linear(W, 1, bias=False)"
        )
    if other:
        problems.append(
            f"modules rnnkit cannot write: {other} (supported: nn.Embedding, one "
            "nn.RNN/LSTM/GRU, a final nn.Linear, dropout/identity glue)"
        )
    if problems:
        raise UnsupportedError(f"{name}: " + "; ".join(problems))
    (emb_q, emb), (rnn_q, rnn), (head_q, head) = embeddings[0], rnns[0], linears[0]
    cell = CELL_OF.get(type(rnn))
    where = f"{name}.{rnn_q}"
    if cell is None:
        problems.append(f"{where} is {type(rnn).__name__}; expected nn.RNN, nn.LSTM or nn.GRU")
    if getattr(rnn, "proj_size", 0):
        problems.append(
            f"{where}: proj_size={rnn.proj_size} (projected LSTM) is not supported; ONNX LSTM has no projection"
        )
    if getattr(rnn, "nonlinearity", "tanh") != "tanh":
        problems.append(
            f"{where}: nonlinearity={rnn.nonlinearity!r}; only 'tanh' is supported "
            "(the numba backend runs ONNX RNN's default Tanh only)"
        )
    if emb.max_norm is not None:
        problems.append(
            f"{name}.{emb_q}: max_norm={emb.max_norm} renormalises rows at lookup; "
            "call it once on the table and clear max_norm before export"
        )
    if emb.embedding_dim != rnn.input_size:
        problems.append(
            f"{name}.{emb_q}: embedding_dim={emb.embedding_dim} but {rnn_q}.input_size="
            f"{rnn.input_size}; rnnkit feeds the embedding straight into the recurrent module"
        )
    width = rnn.hidden_size * (2 if rnn.bidirectional else 1)
    if head.in_features != width:
        problems.append(
            f"{name}.{head_q}: in_features={head.in_features} but the pooled width is "
            f"{width} (hidden_size x directions)"
        )
    if attention is not None:
        proj = module.get_submodule(attention).proj
        if proj.in_features != width:
            problems.append(f"{name}.{attention}.proj: in_features={proj.in_features}, expected {width}")
    if problems:
        raise UnsupportedError(f"{name}: " + "; ".join(problems))
    return ModuleParts(emb_q, rnn_q, head_q, attention, bool(rnn.batch_first), bool(rnn.bias))


def config_from_module(
    module: nn.Module, pooling: str = "last", padding_idx: int | None = None
) -> tuple[ClassifierConfig, dict[str, np.ndarray]]:
    """User module -> (ClassifierConfig, weights keyed like RecurrentClassifier.state_dict()).

    ``find_parts(module)`` tells where each piece was found and whether the user's recurrent
    module is batch_first (the graph itself always takes ``input_ids`` as (batch, time)).
    """
    parts = find_parts(module, pooling)
    emb = module.get_submodule(parts.embedding)
    rnn = module.get_submodule(parts.rnn)
    head = module.get_submodule(parts.head)
    if padding_idx is None:
        padding_idx = emb.padding_idx if emb.padding_idx is not None else 0
    drops = [m.p for m in module.modules() if isinstance(m, nn.Dropout)]
    config = ClassifierConfig(
        vocab_size=emb.num_embeddings,
        num_labels=head.out_features,
        cell=CELL_OF[type(rnn)],
        embed=emb.embedding_dim,
        hidden=rnn.hidden_size,
        layers=rnn.num_layers,
        bidirectional=rnn.bidirectional,
        pooling=pooling,
        dropout=drops[0] if drops else float(rnn.dropout),
        padding_idx=padding_idx,
    )

    weights = {"embedding.weight": _np(emb.weight)}
    for layer in range(rnn.num_layers):
        for suffix in ("", "_reverse")[: config.directions]:
            key = f"l{layer}{suffix}"
            for kind in ("ih", "hh"):
                w = _np(getattr(rnn, f"weight_{kind}_{key}"))
                weights[f"rnn.weight_{kind}_{key}"] = w
                bias = getattr(rnn, f"bias_{kind}_{key}", None) if rnn.bias else None
                weights[f"rnn.bias_{kind}_{key}"] = (
                    _np(bias) if bias is not None else np.zeros(w.shape[0], np.float32)
                )  # bias=False is the same as zero biases
    if parts.attention is not None:
        att = module.get_submodule(parts.attention)
        weights["attention.proj.weight"] = _np(att.proj.weight)
        weights["attention.proj.bias"] = (
            _np(att.proj.bias) if att.proj.bias is not None else np.zeros(att.proj.out_features, np.float32)
        )
        weights["attention.v.weight"] = _np(att.v.weight)
    weights["head.weight"] = _np(head.weight)
    weights["head.bias"] = _np(head.bias) if head.bias is not None else np.zeros(head.out_features, np.float32)
    return config, weights


def one_direction_hint(
    module: nn.Module, call, config, weights: dict[str, np.ndarray], output: str, seed: int = 0
) -> str | None:
    """When only one direction of a bidirectional module disagrees with the graph, say which.

    Zeroing a direction's weights and biases in the last layer makes its output exactly 0 at every
    step (each cell's state stays 0), in the module and in the graph alike.  If the two differ, and
    agree once direction d is zeroed, everything but d already agreed: d is what the forward reads
    differently.  The probe runs the user's forward on a copy and the graph (written from the zeroed
    weights) on onnxruntime, over ragged batches of 3 at lengths 7 and 33; None when the unchanged
    module already agrees there, or zeroing either direction does not help."""
    import copy

    import onnxruntime as ort
    import torch

    from ..runtime.tolerance import FP32
    from .oracle import torch_forward
    from .pipeline import session_forward
    from .task_classify import build_classifier_graph
    from .validate import _probabilities, _rows_differ, outputs, parity_feeds

    parts = find_parts(module, config.pooling)
    last = config.layers - 1
    feeds = list(parity_feeds(config.vocab_size, seed=seed, batch_sizes=(3,), lengths=(7, 33)))

    def agree(module: nn.Module, weights: dict[str, np.ndarray]) -> bool:
        graph = build_classifier_graph(config, weights, {})
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        oracle = _probabilities(torch_forward(module, call, user=True), output)
        candidate = _probabilities(session_forward(session))
        return all(
            not _rows_differ(outputs(candidate(f)), outputs(oracle(f)), f["sequence_lens"], FP32).any() for f in feeds
        )

    if agree(module, weights):  # the difference does not show on these short batches (e.g. a truncation)
        return None
    for suffix, name in (("_reverse", "backward"), ("", "forward")):
        keys = [f"{kind}_{part}_l{last}{suffix}" for kind in ("weight", "bias") for part in ("ih", "hh")]
        zeroed = copy.deepcopy(module)
        rnn = zeroed.get_submodule(parts.rnn)
        with torch.no_grad():
            for key in keys:
                if getattr(rnn, key, None) is not None:
                    getattr(rnn, key).zero_()
        graph_weights = {
            k: (np.zeros_like(v) if k.startswith("rnn.") and k[4:] in keys else v) for k, v in weights.items()
        }
        if agree(zeroed, graph_weights):
            where = (
                "its final state after reading each row back to the first token (h_n[-1], or the "
                "backward half of output at t=0), not e.g. the backward half of output at the row's last "
                "token, which has read one token"
                if name == "backward" and config.pooling == "last"
                else f"pooling={config.pooling!r} over the row's real tokens"
            )
            return (
                f"only the {name} direction differs: with its weights zeroed (last layer, in the module and in "
                f"the graph) every row agrees. rnnkit reads the {name} direction as {where}; the forward "
                f"reads it otherwise"
            )
    return None
