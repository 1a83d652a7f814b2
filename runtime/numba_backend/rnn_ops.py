"""ONNX ``RNN``/``GRU``/``LSTM`` and onnxruntime's ``com.microsoft.DynamicQuantizeLSTM`` as numba ops.

Each op checks its attributes at construction (anything the kernels do not implement is refused
with ``UnsupportedError`` naming the node), packs constant ``W``/``R``/``B``/``P`` once (int8
weights stay int8: ``QuantizedWeight`` for the ONNX ops, the raw int8/uint8 initializers and
their scales for DynamicQuantizeLSTM), and is then called with all runtime inputs positionally.
It returns ``(Y, Y_h)`` (RNN, GRU) or ``(Y, Y_h, Y_c)`` (LSTM), cut to ``len(node.output)``; an
output named ``''`` is still computed and left for the executor to drop.

The kernels and their semantics (``sequence_lens``, a length-0 row) are in ``rnn.py``.
Must not import torch or onnxruntime.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import numpy as np

from . import rnn
from .base import Op, QuantizedWeight

_DEFAULT_ACTIVATIONS = {"RNN": ["tanh"], "GRU": ["sigmoid", "tanh"], "LSTM": ["sigmoid", "tanh", "tanh"]}
_KIND = {"RNN": rnn.RNN, "GRU": rnn.GRU, "LSTM": rnn.LSTM}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


class RecurrentLayer(NamedTuple):
    """A recurrent node as a fused step runs it (``Op.recurrent_layer``): what ``rnn.run`` would pass
    its serial driver for this node."""

    kind: int  # rnn.RNN / rnn.GRU / rnn.LSTM
    hidden: int  # H
    directions: int  # nd
    inputs: int  # I, the input size W expects
    weights: rnn.RNNWeights  # the packed weights
    dirs: np.ndarray  # per direction: 1 if it reads backwards (rnn.DIRS)
    clip: np.float32  # rnn.kernel_scalars: NO_CLIP for none
    flag: int  # GRU linear_before_reset / LSTM input_forget


class _Recurrent(Op):
    """What RNN, GRU and LSTM share: attribute checks, weight packing, the call."""

    cell: ClassVar[str]
    supported_attributes = frozenset({"activations", "clip", "direction", "hidden_size", "layout"})
    n_outputs: ClassVar[int] = 2
    P_index: ClassVar[int | None] = None  # input index of the peepholes (LSTM)
    # W and R may arrive as QuantizedWeight (int8 graphs): the kernels run on the int8 blocks.
    quantized_inputs: ClassVar[frozenset[int]] = frozenset({1, 2})
    dynamic: ClassVar[bool] = False  # activations quantized at run time (DynamicQuantizeLSTM)

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.direction = self.attr("direction", "forward")
        if self.direction not in _DIRECTIONS:
            self.refuse(f"direction={self.direction!r} is not one of {sorted(_DIRECTIONS)}")
        self.nd = _DIRECTIONS[self.direction]
        acts = [a.decode() if isinstance(a, bytes) else a for a in self.attr("activations", [])]
        if acts and [a.lower() for a in acts] != _DEFAULT_ACTIVATIONS[self.cell] * self.nd:
            self.refuse(
                f"activations={acts} are not supported (only the defaults "
                f"{_DEFAULT_ACTIVATIONS[self.cell] * self.nd}, case-insensitive)"
            )
        self.layout = int(self.attr("layout", 0))
        if self.layout not in (0, 1):
            self.refuse(f"layout={self.layout} is not 0 or 1")
        self.clip = self.attr("clip", None)
        if self.clip is not None and not self.clip > 0:
            self.refuse(f"clip={self.clip} must be positive")
        self.hidden = self.attr("hidden_size", None)
        self.n_out = min(self.n_outputs, len(node.output)) if node.output else self.n_outputs
        self.flag = 0
        self._packed = None
        if self._weights_constant():
            self._packed = self._pack(*(consts.get(i) for i in self._weight_indices()))

    # -- weights ---------------------------------------------------------------------------
    def _weight_indices(self):
        return (1, 2, 3) + ((self.P_index,) if self.P_index is not None else ())

    def _weights_constant(self):
        """W and R constant, and B/P (and scales) either constant or not given: pack once."""
        idx = self._weight_indices()
        return all(i in self.consts for i in idx[:2]) and all(
            i in self.consts or not self._declared(i) for i in idx[2:]
        )

    def _declared(self, i):
        return len(self.node.input) > i and self.node.input[i] != ""

    @staticmethod
    def _quantized(w: QuantizedWeight):
        """QuantizedWeight [nd, G*H, K] -> (q^T [nd, K, G*H], scale, zero point [nd, G*H]) for the
        int8 kernels when its scale is per tensor or per row; any other layout is dequantized
        (still correct, just fp32 in the kernel)."""
        q = np.asarray(w.q)
        rows = q.shape[:-1]
        s = np.asarray(w.scale, np.float32)
        z = np.zeros(1, np.float32) if w.zero_point is None else np.asarray(w.zero_point).astype(np.float32)
        per_row = w.axis == -1 and s.shape == rows and z.size in (1, s.size)
        if q.dtype not in (np.int8, np.uint8) or not (per_row or (s.size == 1 and z.size == 1)):
            return w.dequantize()
        z = z.reshape(rows) if z.size > 1 else z.reshape(())
        return (
            q.transpose(0, 2, 1),
            np.broadcast_to(s.reshape(rows if s.size > 1 else ()), rows),
            np.broadcast_to(z, rows),
        )

    def _pack(self, W, R, B, P=None):
        W = self._quantized(W) if isinstance(W, QuantizedWeight) else W
        R = self._quantized(R) if isinstance(R, QuantizedWeight) else R
        return self._pack_arrays(W, R, B, P)

    def _pack_arrays(self, W, R, B, P):
        Wshape = W[0].shape if isinstance(W, tuple) else np.shape(W)
        Rshape = (R[0].shape[0], R[0].shape[2], R[0].shape[1]) if isinstance(R, tuple) else np.shape(R)
        G = rnn.GATES[_KIND[self.cell]]
        H = Rshape[-1]
        if self.hidden is not None and self.hidden != H:
            self.refuse(f"hidden_size={self.hidden} but R has shape {list(Rshape)}")
        if Rshape[0] != self.nd or Rshape[1] != G * H:
            self.refuse(
                f"R has shape {list(Rshape)}, expected [{self.nd}, {G * H}, {H}] for direction={self.direction!r}"
            )
        if Wshape[0] != self.nd:
            self.refuse(f"W has {Wshape[0]} direction(s), expected {self.nd}")
        return rnn.PackedRNN(
            _KIND[self.cell],
            H,
            W,
            R,
            B,
            P,
            linear_before_reset=self.attrs.get("linear_before_reset", 0),
            dynamic=self.dynamic,
        )

    def recurrent_layer(self) -> RecurrentLayer | None:
        """See ``base.Op.recurrent_layer``: packed weights, layout 0 and fp32 activations only."""
        p = self._packed
        if p is None or p.aq or self.layout != 0:
            return None
        clip, flag = rnn.kernel_scalars(p, self.clip, self.flag)
        return RecurrentLayer(p.kind, p.H, p.nd, p.I, p.weights, rnn.DIRS[self.direction], clip, flag)

    # -- run -------------------------------------------------------------------------------
    def __call__(self, X, W=None, R=None, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):
        packed = self._packed
        if packed is None:
            packed = self._pack(*(self.consts.get(i, v) for i, v in zip(self._weight_indices(), (W, R, B, P))))
        out = rnn.run(packed, X, self.direction, self.layout, sequence_lens, initial_h, initial_c, self.clip, self.flag)
        return out[: self.n_out]


class RNN(_Recurrent):
    cell = "RNN"


class GRU(_Recurrent):
    cell = "GRU"
    supported_attributes = _Recurrent.supported_attributes | {"linear_before_reset"}

    def __init__(self, node, consts):
        lbr = next((a.i for a in node.attribute if a.name == "linear_before_reset"), 0)
        super().__init__(node, consts)
        if lbr not in (0, 1):
            self.refuse(f"linear_before_reset={lbr} is not 0 or 1")


class LSTM(_Recurrent):
    cell = "LSTM"
    supported_attributes = _Recurrent.supported_attributes | {"input_forget"}
    n_outputs = 3
    P_index = 7

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.flag = int(self.attr("input_forget", 0))
        if self.flag not in (0, 1):
            self.refuse(f"input_forget={self.flag} is not 0 or 1")


class DynamicQuantizeLSTM(LSTM):
    """onnxruntime's com.microsoft.DynamicQuantizeLSTM (ContribOperators.md).

    Inputs: X, W [nd, input, 4H] and R [nd, H, 4H] int8/uint8 (already transposed relative to the
    ONNX LSTM), B, sequence_lens, initial_h, initial_c, P, W_scale, W_zero_point, R_scale,
    R_zero_point; scales and zero points are per tensor ``[nd]`` or per channel ``[nd, 4H]``.
    Like onnxruntime, X and h are quantized to uint8 at run time (``qdot.py``: its parameter and
    rounding rules, exact int32 sums), with one parameter set per batch row (onnxruntime: per
    matrix, the same at batch 1).  No ``layout`` attribute.
    """

    dynamic = True

    supported_attributes = frozenset({"activations", "clip", "direction", "hidden_size", "input_forget"})

    def _weight_indices(self):
        return (1, 2, 3, 7, 8, 9, 10, 11)

    def _weights_constant(self):
        return all(i in self.consts for i in (1, 2, 8, 10)) and all(
            i in self.consts or not self._declared(i) for i in (3, 7, 9, 11)
        )

    def _pack(self, W, R, B, P=None, W_scale=None, W_zp=None, R_scale=None, R_zp=None):
        W, R = np.asarray(W), np.asarray(R)
        if W.dtype not in (np.int8, np.uint8) or R.dtype not in (np.int8, np.uint8):
            self.refuse(f"W/R must be int8 or uint8, got {W.dtype}/{R.dtype}")
        cols = (R.shape[0], R.shape[2])

        def per_col(v, what, default):
            if v is None:
                return np.full(cols, default, np.float32)
            v = np.asarray(v, np.float32)
            if v.shape == (cols[0],) or v.size == 1:
                return np.ascontiguousarray(np.broadcast_to(v.reshape(-1, 1), cols))
            if v.shape != cols:
                self.refuse(f"{what} has shape {list(v.shape)}, expected [{cols[0]}] or {list(cols)}")
            return v

        Wt = (W, per_col(W_scale, "W_scale", 1.0), per_col(W_zp, "W_zero_point", 0.0))
        Rt = (R, per_col(R_scale, "R_scale", 1.0), per_col(R_zp, "R_zero_point", 0.0))
        return self._pack_arrays(Wt, Rt, B, P)

    def __call__(
        self,
        X,
        W=None,
        R=None,
        B=None,
        sequence_lens=None,
        initial_h=None,
        initial_c=None,
        P=None,
        W_scale=None,
        W_zero_point=None,
        R_scale=None,
        R_zero_point=None,
    ):
        packed = self._packed
        if packed is None:
            vals = (W, R, B, P, W_scale, W_zero_point, R_scale, R_zero_point)
            packed = self._pack(*(self.consts.get(i, v) for i, v in zip(self._weight_indices(), vals)))
        out = rnn.run(packed, X, self.direction, 0, sequence_lens, initial_h, initial_c, self.clip, self.flag)
        return out[: self.n_out]


OPS: dict[tuple[str, str], type[Op]] = {
    ("", "RNN"): RNN,
    ("", "GRU"): GRU,
    ("", "LSTM"): LSTM,
    ("com.microsoft", "DynamicQuantizeLSTM"): DynamicQuantizeLSTM,
}
