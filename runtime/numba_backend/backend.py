"""``onnx.backend.base.Backend`` for the numba runtime, as ONNX's backend test runner expects.

``NumbaBackend.prepare(model).run(inputs)`` takes the graph inputs positionally (list or
tuple, in graph-input order) or by name (dict) and returns a tuple of outputs.  CPU only.

Must not import torch or onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from ..errors import InputError
from .graph import NumbaSession


class NumbaBackendRep(BackendRep):
    """A prepared model: a ``NumbaSession`` and positional/named ``run``."""

    def __init__(self, session: NumbaSession):
        self.session = session

    def run(self, inputs, **kwargs):
        names = self.session.input_names
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(inputs) != len(names):
                raise InputError(f"{len(inputs)} input(s) given, the graph takes {len(names)}: {names}")
            feeds = dict(zip(names, inputs))
        return tuple(self.session.run(None, feeds))


class NumbaBackend(Backend):
    """ONNX backend running graphs with rnnkit's numpy/numba ops (CPU only)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> NumbaBackendRep:
        if not cls.supports_device(device):
            raise ValueError(f"the numba backend runs on CPU only, not {device!r}")
        return NumbaBackendRep(NumbaSession(model, threads=kwargs.get("threads")))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """Run one node on numpy ``inputs`` (positional, '' inputs skipped) by wrapping it in a graph."""
        arrays = [np.asarray(x) for x in inputs]
        names = [n for n in node.input if n]
        graph_inputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
            for n, x in zip(names, arrays)
        ]
        graph_outputs = [onnx.ValueInfoProto(name=n) for n in node.output if n]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opsets = [
            helper.make_opsetid("", kwargs.get("opset_version", onnx.defs.onnx_opset_version())),
            helper.make_opsetid("com.microsoft", 1),
        ]
        model = helper.make_model(graph, opset_imports=opsets)
        return cls.prepare(model, device).run(dict(zip(names, arrays)))
