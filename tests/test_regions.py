"""Regions: a few nodes cut out as a model of their own compute what they compute inside the whole model."""

from __future__ import annotations

import numpy as np

from onnx_tailor.ir import Model, run, seeded_inputs
from onnx_tailor.ir.regions import border, distances, extract, grow
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs import tensor_value, tiny_mobilenet


def _middle(model: Model) -> set[str]:
    """Three edges around the middle node of `model`: neither a graph input nor output is read there."""
    middle = model.nodes[len(model.nodes) // 2].name
    return grow(model, {middle}, 3)


def test_a_region_reads_and_writes_what_its_nodes_do_in_the_whole_model():
    model = Model(canonicalize(tiny_mobilenet()))
    names = _middle(model)
    region = extract(model, names)
    assert [n.name for n in region.nodes] == [n.name for n in model.nodes if n.name in names]
    inputs = {t for n in region.nodes for t in n.input if t and not model.is_constant(t)
              and (model.producer(t) is None or model.producer(t).name not in names)}
    assert {i.name for i in region.graph_inputs} == inputs and not any(model.is_graph_input(t) for t in inputs)
    read_outside = {o for n in region.nodes for o in n.output if any(c.name not in names for c in model.consumers(o))}
    assert {o.name for o in region.graph.output} == read_outside
    assert all(region.tensor_info[t] == model.tensor_info[t] for t in region.tensor_info)
    feeds = seeded_inputs(model)
    outside = {t: tensor_value(model, t, feeds).astype(np.float32) for t in inputs}
    for name, value in run(region, outside).items():
        np.testing.assert_allclose(value, tensor_value(model, name, feeds), rtol=1e-5, atol=1e-6)


def test_a_region_takes_the_weights_it_reads_and_no_other():
    model = Model(canonicalize(tiny_mobilenet()))
    region = extract(model, _middle(model))
    read = {t for n in region.nodes for t in n.input if model.is_constant(t)}
    assert {t.name for t in region.graph.initializer} == read
    assert all(region.constant(t).tobytes() == model.constant(t).tobytes() for t in read)


def test_distances_count_edges_from_the_cut_inside_the_region():
    model = Model(canonicalize(tiny_mobilenet()))
    names = _middle(model)
    cut = border(model, names)
    assert cut and cut < names
    hops = distances(model, names, cut)
    assert all(hops[n] == 0 for n in cut) and max(hops.values()) >= 2
    middle = model.nodes[len(model.nodes) // 2].name
    assert hops[middle] == 3  # grown three edges each way: the cut is three edges off
