"""Subgraphs: their outer-scope reads, the readers `Model.consumers` sees, and each body as a model of its own."""

from __future__ import annotations

from onnx import TensorProto, helper

from onnx_tailor.ir import Model, run, seeded_inputs
from onnx_tailor.ir.subgraphs import outer_reads
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs_beyond_float import if_model, loop_model


def test_outer_reads_see_through_nested_subgraphs():
    inner = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "inner", [],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
    outer = helper.make_graph([helper.make_node("Relu", ["x"], ["b"]),
                               helper.make_node("If", ["cond"], ["d"], then_branch=inner, else_branch=inner)],
                              "outer", [], [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1])])
    assert outer_reads(inner) == {"a", "b"}
    assert outer_reads(outer) == {"a", "x", "cond"}  # b is made in the outer graph itself


def test_the_node_owning_a_subgraph_reads_what_the_subgraph_reads():
    model = Model(canonicalize(if_model()))
    node = model.node("if")
    assert list(node.input) == ["cond"] and model.reads(node) == ["cond", "t"]
    assert [c.name for c in model.consumers("t")] == ["if"] and model.sole_consumer("t").name == "if"


def test_bodies_are_models_with_the_outer_shapes():
    model = Model(canonicalize(if_model()))
    branches = dict(model.bodies(model.node("if")))
    assert set(branches) == {"then_branch", "else_branch"}
    then = branches["then_branch"]
    assert then.input_shapes == {"t": (1, 16, 8, 8)}
    assert [n.op_type for n in then.nodes] == ["Conv"]  # its Constant weight lifted to an initializer
    assert then.tensor_info[then.graph.output[0].name].shape == (1, 32, 8, 8)
    assert run(then, seeded_inputs(then))  # a model onnxruntime runs

    loop = Model(canonicalize(loop_model(trips=3)))
    [(attribute, body)] = loop.bodies(loop.node("loop"))
    assert attribute == "body"
    assert body.input_shapes == {"i": (), "cond_in": (), "h_in": (1, 16, 8, 8)}
    assert model.bodies(model.node("conv")) == []
