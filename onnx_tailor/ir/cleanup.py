"""Clean-ups of a model's representation: proto -> proto rewrites that need nothing above `ir`.

Each function returns a new proto (or its argument, cleaned) and keeps the
network's outputs as they are. `passes.canonicalize` composes them, with the
BatchNorm fold of the passes, into the canonical form every pass expects;
the `simplify` pass applies the onnxruntime clean-up on its own.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from ..errors import ModelLoadError

# ORT rule names, as its graph transformers register them.
_ORT_REWRITES_WE_SKIP = ["ConvBNFusion", "MatMulAddFusion"]


def lift_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Turn top-level `Constant` nodes into initializers (returns a new proto)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    kept = []
    for node in out.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            kept.append(node)
            continue
        attr = node.attribute[0]
        kind = attr.name
        if kind == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
        elif kind in ("value_float", "value_floats", "value_int", "value_ints"):
            value = onnx.helper.get_attribute_value(attr)
            dtype = onnx.TensorProto.FLOAT if "float" in kind else onnx.TensorProto.INT64
            dims = [] if kind in ("value_float", "value_int") else [len(value)]
            tensor = onnx.helper.make_tensor("", dtype, dims, [value] if not dims else value)
        else:  # sparse or string constants: rare, and no pass reads them
            kept.append(node)
            continue
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def name_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique, non-empty name, keeping good existing names.

    Names are assigned in graph order from the op type, so the same input
    model always gets the same names: recipes can refer to them.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    taken = set()
    counters: dict[str, int] = {}
    pending = []
    for node in out.graph.node:
        if node.name and node.name not in taken:
            taken.add(node.name)
        else:
            pending.append(node)
    for node in pending:
        while True:
            index = counters.get(node.op_type, 0)
            counters[node.op_type] = index + 1
            candidate = f"{node.op_type}_{index}"
            if candidate not in taken:
                break
        node.name = candidate
        taken.add(candidate)
    return out


def ort_basic_cleanup(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic-level offline optimization, minus the rewrites we skip.

    It folds constants, removes Identity/Dropout and folds a per-channel
    Add/Mul that follows a Conv into the Conv. Switched off: its Conv+BN
    fusion (the `fold_batchnorm` pass owns that rule) and MatMul+Add -> Gemm
    (it changes the model's vocabulary for no gain). The private operator
    domains ORT lists in `opset_import` are stripped again, since other tools
    reject them.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="onnx-tailor-") as tmp:
        path = os.path.join(tmp, "basic.onnx")
        options.optimized_model_filepath = path
        try:
            ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=_ORT_REWRITES_WE_SKIP)
        except Exception as exc:  # ORT's own errors: unsupported ops, invalid graphs
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"onnxruntime cannot load this model: {first_line}") from None
        cleaned = onnx.load(path)
    return strip_unused_domains(cleaned, keep_from=proto)


def strip_unused_domains(proto: onnx.ModelProto, keep_from: onnx.ModelProto) -> onnx.ModelProto:
    """Drop opset imports that no node uses and the source model did not declare."""
    used = {n.domain for n in proto.graph.node} | {e.domain for e in keep_from.opset_import}
    kept = [e for e in proto.opset_import if e.domain in used or e.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto
