"""Canonicalization: the one form of a model that every pass and analysis expects.

Exported models come in many spellings of the same network. Canonical form is:
- every `Constant` node lifted to an initializer (Paddle and PyTorch exports
  keep weights in Constant nodes, where a pass would not see them as weights);
- every BatchNormalization that follows a Conv folded into it (our
  `fold_batchnorm` pass, so the folding rule lives in one place);
- onnxruntime's basic-level offline optimization for the generic clean-ups it
  already does well: constant folding, Identity/Dropout removal, and folding a
  per-channel Add/Mul that follows a Conv into the Conv. Two of its rewrites
  are switched off: its own Conv+BN fusion (ours runs) and MatMul+Add -> Gemm
  (it changes the model's vocabulary for no gain); the private operator
  domains it lists in `opset_import` are stripped again, since other tools
  reject them;
- unique, stable node names (the anchors that sites and recipes refer to);
- shapes inferred, with the batch dimension left as the model declared it.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from ..errors import ModelLoadError

MIN_OPSET = 11
# ORT rule names, as its graph transformers register them.
_ORT_REWRITES_WE_SKIP = ["ConvBNFusion", "MatMulAddFusion"]


def opset_of(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def check_opset(proto: onnx.ModelProto, source: str) -> None:
    opset = opset_of(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ModelLoadError(
            f"{source}: opset {opset} is older than {MIN_OPSET}, the oldest onnx-tailor reads; "
            f"upgrade it first, e.g. with onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    if opset > newest:
        raise ModelLoadError(f"{source}: opset {opset} is newer than this onnx ({onnx.__version__}) knows ({newest}); upgrade onnx")


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


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with data propagation (resolves Shape->Reshape chains)."""
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: analysis falls back to running the model
        return proto


def ort_basic_cleanup(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic-level offline optimization, minus the rewrites we skip."""
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


def canonicalize(proto: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """The canonical form of `proto` (see the module docstring). `proto` is not modified."""
    from ..passes.fold_batchnorm import fold_all_batchnorms  # passes build on ir, not the reverse

    check_opset(proto, source)
    canonical = name_nodes(lift_constants(proto))
    canonical = fold_all_batchnorms(canonical)
    canonical = ort_basic_cleanup(canonical)
    canonical = name_nodes(canonical)
    return infer_shapes(canonical)
