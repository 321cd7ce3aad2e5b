"""The cheap graphsurgeon round trip (`ir.roundtrip`) gives exactly what graphsurgeon's own gives.

On every pass and site of the test models, the sketch of the region a
preview cuts, rewritten: sorted and exported by `ir.roundtrip`, the proto is
byte for byte graphsurgeon's (`cleanup().toposort()`, `export_onnx`, without
value_info), while most nodes are the imported protos. Edits that leave a
node's name and tensors alone (an attribute list changed in place, a tensor
renamed) are seen, and an order graphsurgeon would change is changed alike.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnx_tailor.costmodel import cost_model_for, load_target
from onnx_tailor.costmodel.delta import kernel_costs, region_around
from onnx_tailor.ir import Model
from onnx_tailor.ir import roundtrip
from onnx_tailor.ir.regions import extract
from onnx_tailor.passes import all_passes, get_pass, node_edits
from onnx_tailor.passes.canonicalize import canonicalize, load
from tests.graphs import tiny_mobilenet

PARAMS = {"align_channels": {"multiple": 16}, "pad_channels": {"multiple": 16}, "factor_low_rank": {"energy": 0.8}}


def _graphsurgeon(graph: gs.Graph) -> onnx.ModelProto:
    """What graphsurgeon itself makes of a copy of `graph` (the copy carries no record of the import)."""
    copy = graph.copy()
    assert roundtrip._IMPORTED not in copy.__dict__
    proto = gs.export_onnx(copy.cleanup(remove_unused_graph_inputs=False).toposort(), do_type_check=False)
    del proto.graph.value_info[:]
    return proto


def _ours(graph: gs.Graph) -> onnx.ModelProto:
    return roundtrip.export(roundtrip.toposort(graph.cleanup(remove_unused_graph_inputs=False)))


def _same(ours: onnx.ModelProto, theirs: onnx.ModelProto) -> bool:
    """Equal graphs; the opset, IR version and producer are the caller's to set (`Model.from_graphsurgeon`)."""
    return ours.graph.SerializeToString(deterministic=True) == theirs.graph.SerializeToString(deterministic=True)


def _check_every_site(model: Model, monkeypatch) -> tuple[int, int]:
    """(rewrites checked, nodes exported as their imported protos)."""
    costs = kernel_costs(cost_model_for(load_target("npu-p32")), model)
    seen, reused = [], [0]
    real = Model.from_graphsurgeon

    def checked(self, graph):
        if self.sketch:
            record = graph.__dict__[roundtrip._IMPORTED]
            theirs, ours = _graphsurgeon(graph), _ours(graph)
            assert _same(ours, theirs), f"{seen[-1]}: the round trip differs from graphsurgeon's"
            imported = {id(onnx_node) for _, onnx_node, _ in record.values()}
            reused[0] += sum(id(n) in imported for n in _kept_protos(graph, record))
        return real(self, graph)

    monkeypatch.setattr(Model, "from_graphsurgeon", checked)
    # Every rewrite through graphsurgeon: the passes that edit a sketch's proto directly (`passes.node_edits`,
    # checked against graphsurgeon's round trip in tests/passes/test_node_edits.py) fall back to it, too.
    monkeypatch.setattr(node_edits, "NATIVE", False)
    for pass_name in all_passes():
        rewrite = get_pass(pass_name)
        params = PARAMS.get(pass_name, {})
        for site in rewrite.find(model, **params):
            region = extract(model, region_around(model, costs, site.nodes, 1), sketch=True)
            local = next((s for s in rewrite.find(region, **params) if s.step == site.step), None) if region else None
            if local is None:
                continue
            seen.append(f"{pass_name}@{site.anchor}")
            rewrite.preview(region, local)
    return len(seen), reused[0]


def _kept_protos(graph: gs.Graph, record: dict) -> list:
    """The protos `export` takes for `graph`'s nodes as they are (None for those it exports anew)."""
    return [known[1] if (known := record.get(id(node))) is not None and known[0] is node
            and roundtrip._key(node) == known[2] else None for node in graph.nodes]


def test_the_round_trip_of_every_rewrite_of_a_small_model_is_graphsurgeons(monkeypatch):
    checked, reused = _check_every_site(Model(canonicalize(tiny_mobilenet())), monkeypatch)
    assert checked > 3 and reused > 3 * checked


def test_the_round_trip_of_every_rewrite_of_every_test_model_is_graphsurgeons(model_case, monkeypatch):
    checked, reused = _check_every_site(load(model_case.path, model_case.input_shapes or None), monkeypatch)
    assert checked > 10 and reused > 3 * checked


def _sketch_graph() -> gs.Graph:
    return Model(Model(canonicalize(tiny_mobilenet())).proto, sketch=True).to_graphsurgeon()


@pytest.mark.parametrize("edit", ["attribute list in place", "attribute type", "tensor renamed", "op changed",
                                  "input rewired"])
def test_an_edit_that_keeps_the_node_object_is_exported_anew(edit):
    graph = _sketch_graph()
    conv = next(n for n in graph.nodes if n.op == "Conv" and "pads" in n.attrs)
    if edit == "attribute list in place":
        conv.attrs["pads"][0] += 1
    elif edit == "attribute type":
        conv.attrs["group"] = float(conv.attrs["group"])
    elif edit == "tensor renamed":
        conv.outputs[0].name += "_renamed"
    elif edit == "op changed":
        conv.op = "ConvTranspose"
    else:
        conv.inputs[1] = gs.Constant("fresh_weight", np.zeros(conv.inputs[1].shape, np.float32))
    ours, theirs = _ours(graph), _graphsurgeon(graph)
    assert _same(ours, theirs)
    exported = next(n for n in ours.graph.node if n.name == conv.name)
    assert exported != next(n for n in Model(canonicalize(tiny_mobilenet())).nodes if n.name == conv.name)


def test_an_order_graphsurgeon_changes_is_changed_alike_and_a_sorted_one_is_kept():
    x = gs.Variable("x", np.float32, (1, 4))
    a_out, b_out, c_out = (gs.Variable(name, np.float32, (1, 4)) for name in ("a", "b", "c"))
    a = gs.Node("Relu", "A", inputs=[x], outputs=[a_out])
    b = gs.Node("Relu", "B", inputs=[a_out], outputs=[b_out])
    c = gs.Node("Relu", "C", inputs=[x], outputs=[c_out])  # as deep as A: graphsurgeon moves it before B

    def names(nodes) -> list[str]:
        graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[b_out, c_out])
        return [n.name for n in roundtrip.toposort(graph).nodes]

    def theirs(nodes) -> list[str]:
        return [n.name for n in gs.Graph(nodes=nodes, inputs=[x], outputs=[b_out, c_out]).toposort().nodes]

    for order in ([a, b, c], [a, c, b], [b, a, c], [c, b, a]):  # the last two: a reader before its producer
        assert names(order) == theirs(order)
    assert names([a, b, c]) == ["A", "C", "B"]


def test_a_node_graphsurgeon_would_not_give_back_is_exported_by_it():
    """A node's doc_string or metadata does not survive graphsurgeon's export: such a node is exported, not kept."""
    proto = onnx.ModelProto()
    proto.CopyFrom(Model(canonicalize(tiny_mobilenet())).proto)
    proto.graph.node[0].doc_string = "written by the exporter"
    proto.graph.node[1].metadata_props.add(key="origin", value="layer 1")
    graph = Model(proto, sketch=True).to_graphsurgeon()
    ours = _ours(graph)
    assert _same(ours, _graphsurgeon(graph))
    assert not ours.graph.node[0].doc_string and not ours.graph.node[1].metadata_props
