"""Clean-ups of a model's representation: proto -> proto rewrites that need nothing above `ir`.

Each function returns a new proto (or its argument, cleaned) and keeps the
network's outputs as they are. `passes.canonicalize` composes them, with the
BatchNorm fold of the passes, into the canonical form every pass expects;
the `simplify` pass applies the onnxruntime clean-up on its own.
"""

from __future__ import annotations

import os

import onnx
import onnxruntime as ort

from ..errors import ModelLoadError
from . import large
from .subgraphs import outer_reads, subgraphs
from .temporaries import scratch_folder

# ORT rule names, as its graph transformers register them. TransposeOptimizer
# pushes a Transpose down through Slice/Squeeze, one copy per branch: on the
# PaddleOCR recognizer's attention it leaves 11 Transposes where the export
# (and onnxsim) has 9.
_ORT_REWRITES_WE_SKIP = ["ConvBNFusion", "MatMulAddFusion", "TransposeOptimizer"]

# Element types that hold quantized weights. ORT's constant folding would turn
# Cast(int8 weight) * scale into a float32 initializer four times the size, so
# these stay out of its reach (see `_hide_initializers`). Names newer
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
    light = None if large.fits(proto) else large.lighten(proto)
    if light is not None and light.held:
        cleaned = _run_basic(_hide_large_weights(light))
        cleaned.graph.initializer.extend(light.held.values())
        return strip_unused_domains(_restore_graph_inputs(cleaned, proto), keep_from=proto)
    cleaned = _run_basic(_hide_initializers(proto, is_quantized))
    if weight_bytes(cleaned.graph) > weight_bytes(proto.graph):
        # Folding a layout op (Unsqueeze, Transpose) of a weight that another node also reads gives that
        # reader its own copy: silero-vad's LSTM weights, read from both branches of an If, grew by half.
        # Shared weights are kept from folding, and a control-flow body that still grew is kept as written.
        shared = _shared_initializers(proto.graph)
        cleaned = _run_basic(_hide_initializers(proto, lambda t: is_quantized(t) or t.name in shared))
        cleaned = _keep_bodies_that_grew(cleaned, proto)
    return strip_unused_domains(_restore_graph_inputs(cleaned, proto), keep_from=proto)


def _run_basic(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnxruntime's basic level writes it back."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    # The session only writes the optimized model and never runs: weights packed for its MatMul kernels
    # would be one more copy of them at the peak of memory while loading a model.
    options.add_session_config_entry("session.disable_prepacking", "1")
    with scratch_folder("cleanup") as tmp:
        path = os.path.join(tmp, "basic.onnx")
        options.optimized_model_filepath = path
        try:
            ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=_ORT_REWRITES_WE_SKIP)
        except Exception as exc:  # ORT's own errors: unsupported ops, invalid graphs
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"onnxruntime cannot load this model: {first_line}") from None
        return onnx.load(path)


def weight_bytes(graph: onnx.GraphProto) -> int:
    """Bytes of the constant tensors of `graph` and of the bodies nested in its nodes."""
    total = sum(large.tensor_nbytes(t) for t in graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            total += sum(large.tensor_nbytes(a.t) for a in node.attribute if a.name == "value")
        total += sum(weight_bytes(g) for _, g in subgraphs(node))
    return total


def _shared_initializers(graph: onnx.GraphProto) -> set[str]:
    """Initializers of the main graph that more than one node reads (nodes of nested bodies count)."""
    readers: dict[str, int] = {}

    def count(g: onnx.GraphProto) -> None:
        for node in g.node:
            for name in set(node.input):
                readers[name] = readers.get(name, 0) + 1
            for _, body in subgraphs(node):
                count(body)

    count(graph)
    return {t.name for t in graph.initializer if readers.get(t.name, 0) > 1}


def _keep_bodies_that_grew(cleaned: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """`cleaned` with the bodies of each control-flow node whose constants folding grew put back as
    `source` wrote them, where every outer value those bodies read still exists in `cleaned`."""
    written = {n.name: n for n in source.graph.node if n.name}
    available = ({i.name for i in cleaned.graph.input} | {t.name for t in cleaned.graph.initializer}
                 | {o for n in cleaned.graph.node for o in n.output})
    for node in cleaned.graph.node:
        before = written.get(node.name)
        if before is None or before.op_type != node.op_type:
            continue
        grown = sum(weight_bytes(g) for _, g in subgraphs(node))
        as_written = sum(weight_bytes(g) for _, g in subgraphs(before))
        outer = set().union(*(outer_reads(g) for _, g in subgraphs(before)))
        if grown > as_written and outer <= available:
            del node.attribute[:]
            node.attribute.extend(before.attribute)
    return cleaned


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


def _hide_initializers(proto: onnx.ModelProto, hide) -> onnx.ModelProto:
    """A copy with every initializer for which `hide(tensor)` holds also listed as a graph input.

    ORT treats an initializer that is a graph input as overridable at run
    time, so it never constant-folds through it: a Cast or
    DequantizeLinear of an int8 weight stays as written. (ORT already leaves
    DequantizeLinear alone; a Cast it folds.) `_restore_graph_inputs` undoes
    the listing.
    """
    listed = {i.name for i in proto.graph.input}
    hidden = [t for t in proto.graph.initializer if hide(t) and t.name not in listed]
    if not hidden:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in hidden)
    return out


def _hide_large_weights(light: large.Light) -> onnx.ModelProto:
    """The light form of a model past 2 GiB (`ir.large`) with its held weights turned into graph inputs
    (in place: `light.proto` is the caller's own copy).

    onnxruntime then never needs their values (nor folds through them, as for `_hide_initializers`),
    so its clean-up costs no copy of gigabytes; `ort_basic_cleanup` puts them back. What is lost is
    folding a constant expression of such a weight, or a Conv+Add/Mul into such a weight: the
    `fold_affine` step after this one takes the latter."""
    kept = [t for t in light.proto.graph.initializer if t.name not in light.held]
    del light.proto.graph.initializer[:]
    light.proto.graph.initializer.extend(kept)
    light.proto.graph.input.extend(onnx.helper.make_tensor_value_info(name, t.data_type, t.dims)
                                   for name, t in light.held.items())
    return light.proto


def _restore_graph_inputs(cleaned: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """`cleaned` with the graph inputs of `source` again, in its order (drops what `_hide_initializers` listed)."""
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
