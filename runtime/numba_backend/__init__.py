"""The numba backend: an ONNX graph executor in numpy + numba (no onnxruntime, no torch)."""

from .backend import NumbaBackend as NumbaBackend
from .graph import NumbaSession as NumbaSession
from .graph import load_session as load_session
