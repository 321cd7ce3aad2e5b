"""Canonicalization: each step alone on a small graph, the order of the steps, and the whole on real models."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_tailor.ir
from onnx_tailor.ir import Model, check_equivalence, read_proto
from onnx_tailor.ir.cleanup import (lift_constants, name_nodes, ort_basic_cleanup, strip_unused_domains,
                                    weight_bytes)
from onnx_tailor.ir.shapes import infer_shapes
from onnx_tailor.ir.subnormals import flush_subnormal_weights
from onnx_tailor.passes.canonicalize import CANONICAL_STEPS, EXPORTED_STEPS, canonicalize, load
from onnx_tailor.passes.fold_affine import fold_all_affine
from onnx_tailor.passes.fold_batchnorm import fold_all_batchnorms
from tests.graphs import (OPSET, QUANTIZED_SPELLINGS, GraphBuilder, float16_conv_scale_softmax, quantized_matmul,
                          tiny_mobilenet)

IR_FOLDER = Path(onnx_tailor.ir.__file__).parent


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def conv_bn_mul() -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Mul(per-channel constant) -> Relu."""
    b = GraphBuilder(seed=1)
    y = b.batchnorm(b.conv("x", 3, 4, 3, name="conv"), 4, name="bn")
    y = b.node("Mul", [y, b.const(np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1))], name="scale")
    return b.build({"x": (1, 3, 6, 6)}, [b.node("Relu", [y], name="relu")])


def relu_chain(names: list[str], kinds: list[str] | None = None) -> onnx.ModelProto:
    """x -> Relu -> Relu -> ... (or the op types `kinds`) with the given node names, empty and repeated ones too."""
    kinds = kinds or ["Relu"] * len(names)
    nodes = [helper.make_node(kind, [f"t{i}" if i else "x"], [f"t{i + 1}"], name=name)
             for i, (kind, name) in enumerate(zip(kinds, names))]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info(f"t{len(names)}", TensorProto.FLOAT, [1, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


# -- the composition ---------------------------------------------------------------------------


def test_the_canonical_steps_in_their_order():
    assert CANONICAL_STEPS == (lift_constants, name_nodes, fold_all_batchnorms, ort_basic_cleanup, fold_all_affine,
                               flush_subnormal_weights, name_nodes, infer_shapes)
    assert EXPORTED_STEPS == (lift_constants, name_nodes, infer_shapes)


def test_canonicalize_runs_the_steps_it_is_given_in_order():
    seen = []

    def step(tag):
        def record(proto):
            seen.append(tag)
            return proto
        return record

    proto = conv_bn_mul()
    assert canonicalize(proto, steps=(step("first"), step("second"))) is proto
    assert seen == ["first", "second"]


def test_batchnorm_is_folded_before_onnxruntime_cleans_up():
    proto = conv_bn_mul()
    canonical = canonicalize(proto)
    assert op_types(canonical) == ["Conv", "Relu"]  # the Mul that followed the BatchNorm now follows the Conv: ORT folds it
    assert op_types(fold_all_batchnorms(ort_basic_cleanup(proto))) == ["Conv", "Mul", "Relu"]  # the other order misses it
    assert check_equivalence(Model(proto), Model(canonical))
    assert op_types(proto) == ["Conv", "BatchNormalization", "Mul", "Relu"], "the input proto must not change"


def test_a_batchnorm_that_switched_channels_off_leaves_no_subnormal_weight():
    """Folding a BatchNorm whose scale is tiny makes subnormal weights (the PaddleOCR detector's did, and a
    CPU multiplies by them in microcode); the canonical form has zeros there, and the same outputs."""
    b = GraphBuilder(seed=2)
    y = b.node("Relu", [b.batchnorm(b.conv("x", 3, 4, 3, name="conv"), 4, name="bn")])
    proto = b.build({"x": (1, 3, 6, 6)}, [y])
    scale = next(t for t in proto.graph.initializer if t.name == proto.graph.node[1].input[1])
    scale.CopyFrom(numpy_helper.from_array(np.array([1.0, 1e-39, 1.0, -1e-40], np.float32), scale.name))
    folded = fold_all_batchnorms(proto)
    tiny = np.finfo(np.float32).tiny

    def subnormals(p):
        return sum(int(((a != 0) & (np.abs(a) < tiny)).sum())
                   for a in (numpy_helper.to_array(t) for t in p.graph.initializer) if a.dtype == np.float32)

    assert subnormals(folded) > 0, "the fold itself makes them (else this test shows nothing)"
    canonical = canonicalize(proto)
    assert subnormals(canonical) == 0
    assert check_equivalence(Model(proto), Model(canonical))
    assert subnormals(fold_all_batchnorms(proto)) > 0, "the input proto must not change"


def test_flushing_copies_nothing_when_no_weight_is_subnormal_and_reaches_subgraphs():
    proto = conv_bn_mul()
    assert flush_subnormal_weights(proto) is proto
    then = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "then", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                             [numpy_helper.from_array(np.array([1e-42, 2.0], np.float32), "w")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])])
    with_if = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    flushed = flush_subnormal_weights(with_if)
    body = flushed.graph.node[0].attribute[0].g if flushed.graph.node[0].attribute[0].name == "then_branch" \
        else flushed.graph.node[0].attribute[1].g
    assert numpy_helper.to_array(body.initializer[0]).tolist() == [0.0, 2.0]
    assert numpy_helper.to_array(then.initializer[0])[0] == np.float32(1e-42), "the input proto must not change"


# -- each step alone -----------------------------------------------------------------------------


def test_lift_constants_turns_constant_nodes_into_initializers():
    b = GraphBuilder(seed=2)
    scale = b.node("Constant", [], value=numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32)))
    shift = b.node("Constant", [], value_float=0.5)
    proto = b.build({"x": (1, 3, 4, 4)}, [b.node("Add", [b.node("Mul", ["x", scale]), shift])])
    lifted = lift_constants(proto)
    assert op_types(lifted) == ["Mul", "Add"]
    assert {scale, shift} <= {t.name for t in lifted.graph.initializer}
    assert op_types(proto) == ["Constant", "Constant", "Mul", "Add"]
    assert check_equivalence(Model(proto), Model(lifted))


def test_name_nodes_keeps_unique_names_and_names_the_rest_by_op_type():
    proto = relu_chain(["", "act", "act", "", "Relu_0"], ["Relu", "Relu", "Relu", "Sigmoid", "Relu"])
    named = name_nodes(proto)
    assert [n.name for n in named.graph.node] == ["Relu_1", "act", "Relu_2", "Sigmoid_0", "Relu_0"]
    assert name_nodes(named) == named
    assert [n.name for n in proto.graph.node] == ["", "act", "act", "", "Relu_0"]


def test_fold_step_folds_every_conv_batchnorm_pair():
    proto = conv_bn_mul()
    folded = fold_all_batchnorms(proto)
    assert op_types(folded) == ["Conv", "Mul", "Relu"]
    assert check_equivalence(Model(proto), Model(folded))


def test_onnxruntime_cleanup_folds_constants_and_identities_but_not_batchnorm():
    b = GraphBuilder(seed=3)
    y = b.batchnorm(b.conv("x", 3, 4, 3), 4)
    bias = b.node("Reshape", [b.const(np.arange(4, dtype=np.float32)), b.const(np.array([1, 4, 1, 1]))])
    proto = b.build({"x": (1, 3, 6, 6)}, [b.node("Relu", [b.node("Identity", [b.node("Add", [y, bias])])])])
    cleaned = ort_basic_cleanup(proto)
    assert op_types(cleaned) == ["Conv", "BatchNormalization", "Add", "Relu"]  # the fold is ours alone
    assert [e.domain for e in cleaned.opset_import] == [""], "ORT's private domains must be stripped"
    assert check_equivalence(Model(proto), Model(cleaned))


def test_onnxruntime_cleanup_keeps_one_transpose_above_its_branches():
    """Attention in the PaddleOCR recognizer: Transpose -> Slice q, k, v; ORT's transpose optimizer
    would push a copy of the Transpose into each branch."""
    b = GraphBuilder(seed=4)
    stacked = b.node("Transpose", ["x"], perm=[2, 0, 3, 1, 4])
    q, k, v = (b.node("Squeeze", [b.node("Slice", [stacked, b.const(np.array([i])), b.const(np.array([i + 1])),
                                                   b.const(np.array([0]))]), b.const(np.array([0]))])
               for i in range(3))
    proto = b.build({"x": (1, 5, 3, 2, 4)}, [b.node("Add", [b.node("Mul", [q, k]), v])])
    cleaned = ort_basic_cleanup(proto)
    assert sorted(op_types(cleaned)) == sorted(op_types(proto))  # one Transpose, as exported
    assert check_equivalence(Model(proto), Model(cleaned))


def test_onnxruntime_cleanup_never_copies_a_weight_that_two_nodes_read():
    """Folding Transpose(W) while a MatMul still reads W would store W twice."""
    b = GraphBuilder(seed=5)
    weight = b.const(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    direct = b.node("MatMul", ["x", weight])
    transposed = b.node("MatMul", ["x", b.node("Transpose", [weight], perm=[1, 0])])
    proto = b.build({"x": (2, 16)}, [b.node("Add", [direct, transposed])])
    cleaned = ort_basic_cleanup(proto)
    assert weight_bytes(cleaned.graph) <= weight_bytes(proto.graph)
    assert check_equivalence(Model(proto), Model(cleaned))


def _branch(name: str, weight: str) -> onnx.GraphProto:
    """A body that reads `weight` from its enclosing scope through an Unsqueeze (as an LSTM export does)."""
    unsqueezed = helper.make_node("Unsqueeze", [weight, "axes"], [f"{name}_w"], name=f"{name}_unsqueeze")
    product = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_matmul")
    return helper.make_graph([unsqueezed, product], name, [],
                             [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)])


def test_onnxruntime_cleanup_never_copies_a_weight_into_both_branches_of_an_if():
    """silero-vad: a weight inside an If's body read from both branches of a nested If; folding each
    branch's Unsqueeze gave each its own copy (2.18 -> 3.24 MB)."""
    weight = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    inner = helper.make_node("If", ["flag"], ["inner_y"], name="inner_if",
                             then_branch=_branch("then", "w"), else_branch=_branch("else", "w"))
    body = helper.make_graph([inner], "outer_then", [], [helper.make_tensor_value_info("inner_y", TensorProto.FLOAT,
                                                                                        None)], [weight])
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["plain_y"], name="plain")], "outer_else", [],
                              [helper.make_tensor_value_info("plain_y", TensorProto.FLOAT, None)])
    outer = helper.make_node("If", ["flag"], ["y"], name="outer_if", then_branch=body, else_branch=plain)
    graph = helper.make_graph([outer], "nested_if",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8]),
                               helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [axes])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    cleaned = ort_basic_cleanup(proto)
    assert weight_bytes(cleaned.graph) <= weight_bytes(proto.graph)
    assert check_equivalence(Model(proto), Model(cleaned))


def test_strip_unused_domains_keeps_what_nodes_use_or_the_source_declared():
    proto = relu_chain(["a"])
    proto.opset_import.extend([helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.onnx.ml", 3)])
    source = relu_chain(["a"])
    source.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    assert [e.domain for e in strip_unused_domains(proto, keep_from=source).opset_import] == ["", "ai.onnx.ml"]


def test_shapes_are_inferred_for_every_tensor_and_the_batch_stays_dynamic():
    canonical = canonicalize(tiny_mobilenet(dynamic_batch=True))
    shaped = {vi.name for vi in list(canonical.graph.value_info) + list(canonical.graph.output)}
    assert all(out in shaped for n in canonical.graph.node for out in n.output)
    assert canonical.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


# -- nothing changes type -----------------------------------------------------------------------


def _typed_weights(proto: onnx.ModelProto) -> dict[str, tuple[int, bytes]]:
    return {t.name: (t.data_type, numpy_helper.to_array(t).tobytes()) for t in proto.graph.initializer}


@pytest.mark.parametrize("spelling", QUANTIZED_SPELLINGS)
def test_quantized_weights_stay_quantized(spelling):
    proto = quantized_matmul(spelling)
    canonical = canonicalize(proto)
    assert _typed_weights(canonical) == _typed_weights(proto), "weights keep their bytes and types"
    assert op_types(canonical) == op_types(proto)
    assert [i.name for i in canonical.graph.input] == ["x"], "no weight is left listed as a graph input"
    assert check_equivalence(Model(proto), Model(canonical))


def test_float16_models_stay_float16():
    """onnxruntime's CPU provider would wrap every node in InsertedPrecisionFreeCast casts to float32 and
    spell Softmax out as ReduceMax/Sub/Exp/ReduceSum/Div; canonical form keeps the model as it computes."""
    proto = float16_conv_scale_softmax()
    canonical = canonicalize(proto)
    assert op_types(canonical) == ["Conv", "Softmax"], "the scale folds into the Conv, in float16"
    assert {t.data_type for t in canonical.graph.initializer} == {TensorProto.FLOAT16}
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT16
               for v in list(canonical.graph.input) + list(canonical.graph.output) + list(canonical.graph.value_info))
    assert check_equivalence(Model(proto), Model(canonical), rtol=2 ** -9)  # float16 rounds to 11 bits


def test_a_model_without_anything_to_canonicalize_keeps_its_graph():
    proto = name_nodes(infer_shapes(quantized_matmul("dynamic")))
    assert canonicalize(proto).graph == proto.graph


# -- loading ------------------------------------------------------------------------------------


def _exported(tmp_path) -> Path:
    """tiny_mobilenet as an exporter might write it: no node names."""
    proto = tiny_mobilenet()
    for node in proto.graph.node:
        node.name = ""
    path = tmp_path / "exported.onnx"
    onnx.save(proto, str(path))
    return path


def test_names_are_stable_across_two_loads(tmp_path):
    path = _exported(tmp_path)
    first, second = load(path), load(path)
    names = [n.name for n in first.nodes]
    assert all(names) and len(set(names)) == len(names)
    assert [n.name for n in second.nodes] == names
    assert first.content_hash == second.content_hash


def test_load_exported_form_keeps_the_network_and_normalizes_its_representation(tmp_path):
    path = _exported(tmp_path)
    exported = load(path, canonical=False)
    assert "BatchNormalization" in {n.op_type for n in exported.nodes}
    assert all(n.name for n in exported.nodes)
    assert "BatchNormalization" not in {n.op_type for n in load(path).nodes}
    assert check_equivalence(exported, load(path))


def test_canonical_form_lifts_constants_folds_batchnorm_and_names_nodes(paddle_models):
    path = paddle_models["paddle_cls"]
    raw = read_proto(path)
    assert any(n.op_type == "Constant" for n in raw.graph.node)
    model = load(path, {"x": (3, 3, 48, 192)})
    ops = {n.op_type for n in model.nodes}
    assert "Constant" not in ops and "BatchNormalization" not in ops and "Identity" not in ops
    names = [n.name for n in model.nodes]
    assert all(names) and len(set(names)) == len(names)
    assert [n.name for n in load(path).nodes] == names, "node names must be stable across loads"
    private = {e.domain for e in model.proto.opset_import} - {"", "ai.onnx"}
    assert not private, f"onnxruntime's private domains leaked into opset_import: {private}"
    assert check_equivalence(Model(raw, {"x": (3, 3, 48, 192)}), model)


# -- the layering ---------------------------------------------------------------------------------


def test_ir_imports_nothing_above_it():
    # The package's own __init__ is the public API, which imports every layer; stand in for it so
    # that what gets imported is what ir itself imports.
    script = (
        "import importlib, importlib.util, pkgutil, sys, types\n"
        "package = types.ModuleType('onnx_tailor')\n"
        "package.__path__ = list(importlib.util.find_spec('onnx_tailor').submodule_search_locations)\n"
        "sys.modules['onnx_tailor'] = package\n"
        "import onnx_tailor.ir\n"
        "for module in pkgutil.iter_modules(onnx_tailor.ir.__path__):\n"
        "    importlib.import_module('onnx_tailor.ir.' + module.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('onnx_tailor.')\n"
        "             and not m.startswith(('onnx_tailor.ir', 'onnx_tailor.errors'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"


def test_ir_imports_nothing_inside_a_function():
    for path in sorted(IR_FOLDER.glob("*.py")):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            hidden = [n.lineno for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not hidden, f"{path.name}:{hidden[0]} imports inside {function.name}()"
