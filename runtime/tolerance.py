"""Named tolerance levels, in one place (after tract's ``Approximation``).

EXACT is for labels and token ids; FP32 for torch vs onnxruntime vs numba on the same
fp32 weights; INT8 for one quantized backend against another (about one quantization
step, as onnxruntime's own ``test/python/quantization/test_op_lstm.py``).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    name: str
    atol: float
    rtol: float

    def close(self, actual: np.ndarray, expected: np.ndarray) -> bool:
        return bool(np.allclose(actual, expected, atol=self.atol, rtol=self.rtol))

    def scaled(self, expected: np.ndarray) -> "Tolerance":
        """This level with ``atol`` multiplied by ``max(1, max|expected|)``: for outputs whose magnitude
        is far above 1 (an LM head's logits, an LSTM cell state), where float32 rounding of the sums
        that make them grows with the size of their terms, not with the (possibly small) result."""
        scale = float(np.max(np.abs(expected))) if np.size(expected) else 1.0
        return Tolerance(f"{self.name}-scaled", self.atol * max(1.0, scale), self.rtol)

    def worst(self, actual: np.ndarray, expected: np.ndarray) -> float:
        """Largest absolute difference (0.0 for empty arrays)."""
        a = np.asarray(actual, dtype=np.float64)
        e = np.asarray(expected, dtype=np.float64)
        return float(np.max(np.abs(a - e))) if a.size else 0.0


EXACT = Tolerance("EXACT", 0.0, 0.0)
FP32 = Tolerance("FP32", 1e-5, 1e-4)
INT8 = Tolerance("INT8", 0.05, 1e-2)  # onnxruntime test_op_lstm.py
# Two int8 backends compared on output probabilities after up to 200 recurrent steps (export
# validation): onnxruntime's DynamicQuantizeLSTM re-quantizes its activations to uint8 at every step
# and the error compounds with length (measured: up to 0.062 on a trained 2-layer BiLSTM tagger at
# T=200 on random tokens, 0.018 on an LSTM classifier), while numba's int8 kernels are exact w.r.t.
# the dequantized weights.  Labels/tags must still agree; int8 accuracy itself is gated on dev data.
INT8_SEQUENCE = Tolerance("INT8_SEQUENCE", 0.1, 2e-2)
