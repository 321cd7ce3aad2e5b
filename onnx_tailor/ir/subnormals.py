"""Subnormal weights flushed to zero: values too small to matter that a CPU computes with slowly.

Folding a BatchNormalization or a scale into a layer multiplies its weights;
where a channel's scale is tiny (a channel training switched off), the
products fall below float32's smallest normal number (about 1.2e-38). No
output can tell them from zero (a subnormal weight moves a sum of normal
products by less than one unit in its last place), but x86 cores without
flush-to-zero handle every multiply that touches one in microcode: on
onnxruntime's CPU provider two 1x1 convs of the PaddleOCR detector whose
folded weights were 10% subnormal took 1.1 ms instead of about 0.05 ms, and
the detector about 7% longer than the same model with them zeroed. The
exporters' files had none; our folds made them, so the canonical form flushes them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .subgraphs import subgraphs

FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def flush_subnormal_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with every float32/float64 initializer's subnormal values set to zero (of the same sign).

    `proto` is not modified: a copy is made only when some weight has a subnormal value, and a tensor
    without one is shared, not copied. External-data tensors (not in memory) are left as they are.
    """
    flushed = {}  # (graph's place in `_graphs`, initializer's index) -> its flushed copy
    for graph_index, graph in enumerate(_graphs(proto.graph)):
        for index, tensor in enumerate(graph.initializer):
            dtype = FLOAT_TYPES.get(tensor.data_type)
            if dtype is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
                continue
            values = numpy_helper.to_array(tensor)
            subnormal = (values != 0) & (np.abs(values) < np.finfo(dtype).tiny)
            if subnormal.any():
                zeroed = np.where(subnormal, np.copysign(0, values), values).astype(dtype)
                flushed[graph_index, index] = numpy_helper.from_array(zeroed, tensor.name)
    if not flushed:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graphs = list(_graphs(out.graph))
    for (graph_index, index), tensor in flushed.items():
        graphs[graph_index].initializer[index].CopyFrom(tensor)
    return out


def _graphs(graph: onnx.GraphProto):
    """`graph` and every subgraph nested in it, in a fixed order."""
    yield graph
    for node in graph.node:
        for _, body in subgraphs(node):
            yield from _graphs(body)
