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

# ORT rule names, as its graph transformers register them. TransposeOptimizer
# pushes a Transpose down through Slice/Squeeze, one copy per branch: on the
# PaddleOCR recognizer's attention it leaves 11 Transposes where the export
# (and onnxsim) has 9.
_ORT_REWRITES_WE_SKIP = ["ConvBNFusion", "MatMulAddFusion", "TransposeOptimizer"]

# Element types that hold quantized weights. ORT's constant folding would turn
# Cast(int8 weight) * scale into a float32 initializer four times the size, so
# these stay out of its reach (see `_hide_quantized_weights`). Names newer
# than the installed onnx are skipped.
_QUANTIZED_STORAGE = frozenset(
    getattr(onnx.TensorProto, name) for name in (
        "INT8", "UINT8", "INT16", "UINT16", "INT4", "UINT4", "INT2", "UINT2", "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, name))
# Float types ORT's CPU provider has few kernels for: it wraps such nodes in
# `InsertedPrecisionFreeCast` casts to float32 and inlines functions (Softmax
# becomes ReduceMax/Sub/Exp/...), and its optimized model keeps all of that.
_REDUCED_FLOATS = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


def lift_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Turn top-level `Constant` nodes into initializers (returns a new proto)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    kept = []
    for node in out.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            kept.append(node)
            continue
        if len(node.attribute) != 1:  # the checker lets a Constant without its value through
            raise ModelLoadError(f"invalid ONNX model: Constant node '{node.name or node.output[0]}' has "
                                 f"{len(node.attribute)} attributes; a Constant holds exactly one value")
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
    fusion (the `fold_batchnorm` pass owns that rule), MatMul+Add -> Gemm
    (it changes the model's vocabulary for no gain) and its transpose
    optimizer (it copies Transposes into branches). The private operator
    domains ORT lists in `opset_import` are stripped again, since other tools
    reject them.

    Nothing changes type: quantized weights are never folded into float ones,
    and a model that computes in float16/bfloat16 is returned as it is,
    since ORT's CPU provider would rewrite it to compute in float32.
    """
    if computes_in_reduced_float(proto):
        return proto
    hidden = _hide_quantized_weights(proto)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="onnx-tailor-") as tmp:
        path = os.path.join(tmp, "basic.onnx")
        options.optimized_model_filepath = path
        try:
            ort.InferenceSession(hidden.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=_ORT_REWRITES_WE_SKIP)
        except Exception as exc:  # ORT's own errors: unsupported ops, invalid graphs
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"onnxruntime cannot load this model: {first_line}") from None
        cleaned = onnx.load(path)
    return strip_unused_domains(_restore_graph_inputs(cleaned, proto), keep_from=proto)


def computes_in_reduced_float(proto: onnx.ModelProto) -> bool:
    """Whether any tensor of the graph (weight, input, output, annotated activation, cast target) is float16/bfloat16."""
    graph = proto.graph
    typed = list(graph.input) + list(graph.output) + list(graph.value_info)
    return (any(t.data_type in _REDUCED_FLOATS for t in graph.initializer)
            or any(v.type.tensor_type.elem_type in _REDUCED_FLOATS for v in typed)
            or any(a.name == "to" and a.i in _REDUCED_FLOATS for n in graph.node if n.op_type == "Cast"
                   for a in n.attribute))


def is_quantized(tensor: onnx.TensorProto) -> bool:
    """Whether an initializer holds quantized values (int8, int4, float8, ...), which folding would widen."""
    return tensor.data_type in _QUANTIZED_STORAGE


def _hide_quantized_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every quantized initializer also listed as a graph input.

    ORT treats an initializer that is a graph input as overridable at run
    time, so it never constant-folds through it: a Cast or
    DequantizeLinear of an int8 weight stays as written. (ORT already leaves
    DequantizeLinear alone; a Cast it folds.) `_restore_graph_inputs` undoes
    the listing.
    """
    listed = {i.name for i in proto.graph.input}
    quantized = [t for t in proto.graph.initializer if is_quantized(t) and t.name not in listed]
    if not quantized:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in quantized)
    return out


def _restore_graph_inputs(cleaned: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """`cleaned` with the graph inputs of `source` again, in its order (drops what `_hide_quantized_weights` listed)."""
    declared = [i.name for i in source.graph.input]
    by_name = {i.name: i for i in cleaned.graph.input}
    kept = [by_name[name] for name in declared if name in by_name]
    del cleaned.graph.input[:]
    cleaned.graph.input.extend(kept)
    return cleaned


def strip_unused_domains(proto: onnx.ModelProto, keep_from: onnx.ModelProto) -> onnx.ModelProto:
    """Drop opset imports that no node uses and the source model did not declare."""
    used = {n.domain for n in proto.graph.node} | {e.domain for e in keep_from.opset_import}
    kept = [e for e in proto.opset_import if e.domain in used or e.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto
