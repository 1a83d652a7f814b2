"""The numba backend: an ONNX graph executor in numpy + numba (no onnxruntime, no torch)."""
