"""Contracts shared by every op of the numba backend.

An op is a class registered under its ``(domain, op_type)``.  It is built once per node
at load time with the node and the values of those inputs that are constant
(initializers), so it can check its attributes and pre-pack weights (transpose, make
contiguous, keep int8) before the first run; it is then called with the runtime values
of all its inputs (``None`` for an omitted optional input) and returns a tuple with one
array per node output.  A constant input is passed as the value the op left in its
``consts`` after construction: an op that has packed a weight into its own layout may set
that entry to None (it then receives None there and must use its packed copy), so that the
weight is held once.

Unsupported ops or attributes raise ``UnsupportedError`` at construction, naming the node
and the op, so nothing ever runs wrongly.

Must not import torch or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedError


@dataclass
class QuantizedWeight:
    """An int8/uint8 constant and how to read it: value = (q - zero_point) * scale.

    ``scale``/``zero_point`` are scalars (per tensor), 1-D along ``axis`` (per channel), or,
    for the ``W``/``R`` inputs of RNN/GRU/LSTM, of shape ``q.shape[:-1]`` = ``[num_directions,
    gates*hidden]`` (one scale per output row of each direction; ``axis`` is then -1 and
    means "broadcast over the last axis").  The graph loader hands these to ops in ``consts`` in
    place of a float array when an input is ``DequantizeLinear(int8 initializer, scale,
    zero_point)``, so kernels can run
    on the int8 weights themselves (a quarter of the memory traffic).
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int = 1

    def dequantize(self) -> np.ndarray:
        q = self.q.astype(np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        zp = None if self.zero_point is None else np.asarray(self.zero_point).astype(np.float32)
        if self.axis == -1:  # one scale per row of the last axis (RNN-family W/R)
            scale = scale[..., None]
            zp = None if zp is None else zp[..., None]
        elif scale.ndim == 1 and q.ndim > 1:
            shape = [1] * q.ndim
            shape[self.axis] = -1
            scale = scale.reshape(shape)
            if zp is not None:
                zp = zp.reshape(shape)
        return ((q - zp) * scale if zp is not None else q * scale).astype(np.float32)


def node_label(node: onnx.NodeProto) -> str:
    """How errors name a node: ``node 'gru_0' (GRU)``."""
    name = node.name or (node.output[0] if node.output else "?")
    return f"node '{name}' ({node.domain + '.' if node.domain else ''}{node.op_type})"


class Op:
    """Base class of numba-backend ops (see the module docstring).

    Capabilities are declared here, with the defaults of an op that has none, so that the passes
    (``passes.py``) ask an op what it offers instead of probing for attributes: a class attribute
    for a fixed property, a method returning None for an offer that depends on the node's constants.
    """

    #: attributes this implementation understands; anything else is refused at load.
    supported_attributes: ClassVar[frozenset[str]] = frozenset()
    #: input indices that may arrive as a ``QuantizedWeight`` (int8 kept int8) instead of a float array;
    #: ``passes.fold_quantized_weights`` hands such a constant over only to these inputs.
    quantized_inputs: ClassVar[frozenset[int]] = frozenset()
    #: every call returns new arrays that nothing else holds, so a consumer that is the value's only
    #: reader may compute into them (``passes.reuse_inplace``).
    fresh_output: ClassVar[bool] = False
    #: the version of the node's domain's opset (set by the graph loader; "latest" for an op built by
    #: hand), for the few ops whose semantics changed between opsets.
    opset: int = 10**6

    def __init__(self, node: onnx.NodeProto, consts: dict[int, np.ndarray | QuantizedWeight | None]):
        self.node = node
        self.consts = consts
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        unknown = set(self.attrs) - set(self.supported_attributes)
        if unknown:
            self.refuse(f"attribute(s) {sorted(unknown)} are not supported")

    def refuse(self, why: str) -> None:
        raise UnsupportedError(
            f"{node_label(self.node)}: {why}; the numba backend cannot run this graph "
            f"(use --backend onnxruntime, or re-export with rnnkit)"
        )

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def __call__(self, *inputs):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- capabilities offered to the passes (None: not offered) -------------------------------
    def with_bias(self, bias: np.ndarray) -> Callable | None:
        """``f(*inputs) = self(*inputs)[0] + bias`` in one pass over the output, for a constant
        ``bias`` (``passes.fuse_matmul_bias``), or None when this node cannot take it."""
        return None

    def packed_matrix(self):
        """The node's constant right-hand matrix as its kernel reads it (``matmul.PackedMatrix``), so
        that a fusion may run the same kernel (``passes.fuse_recurrent_step``), or None."""
        return None

    def recurrent_layer(self):
        """This recurrent node as a layer a fused step may run (``rnn_ops.RecurrentLayer``: cell,
        packed weights, directions, clip): constant weights, layout 0, fp32 activations; else None."""
        return None


OpFactory = Callable[[onnx.NodeProto, dict], Op]
