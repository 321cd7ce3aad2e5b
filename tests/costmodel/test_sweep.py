"""The op sweep's entry lists: the base sweep with a model's kernels, and the manifest written for another machine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_tailor import load
from onnx_tailor.costmodel.sweep import (EXCITATION_RESOLUTIONS, EXPORTED_NEAREST, RESIZE_MAX_ELEMENTS,
                                        SMALL_RESOLUTIONS, SOFTMAX_MAX_ELEMENTS, SweepEntry, base_entries,
                                        excitation_entries, exported_resize_entries, flat_entries,
                                        hardswish_entries, read_manifest, small_map_entries, softmax_axis_entries,
                                        spelled_activation_entries, sweep_entries, write_sweep)
from onnx_tailor.errors import TailorError
from tests.conftest import DIGITS


def test_sweep_entries_add_a_models_kernels_to_the_rule_based_sweep_once():
    base = (base_entries(size=20) + flat_entries(size=16) + spelled_activation_entries(size=8)
            + hardswish_entries(size=8) + small_map_entries(size=8) + softmax_axis_entries(size=8)
            + exported_resize_entries(size=8) + excitation_entries(size=8))
    assert sweep_entries(20) == base
    with_model = sweep_entries(20, [load(DIGITS.path)])
    assert with_model[:len(base)] == base and len(with_model) > len(base)
    assert len(set(with_model)) == len(with_model)
    assert {e.op for e in with_model[len(base):]} <= {"conv", "depthwise"}  # the model's own kernels and neighbours
    assert sweep_entries(20, [load(DIGITS.path)] * 2) == with_model


def test_small_map_entries_are_below_the_base_sweeps_resolutions():
    entries = small_map_entries(size=60)
    assert {e.op for e in entries} == {"conv", "depthwise", "eltwise", "pool"}
    assert {e.p["hw"] for e in entries} <= set(SMALL_RESOLUTIONS) and max(SMALL_RESOLUTIONS) < 7
    assert all(e.p["k"] == 1 for e in entries if e.op == "conv" and e.p["hw"] < 3)  # a gate's 1x1 convs
    assert not set(entries) & set(base_entries(size=60)), "its own seed: the base entries stay as they were"


def test_the_manifest_gives_back_the_entries_written(tmp_path):
    entries = sweep_entries(10)[::9]
    path = write_sweep(entries, tmp_path / "sweep")
    assert path == tmp_path / "sweep" / "manifest.json"
    assert read_manifest(tmp_path / "sweep") == entries
    assert read_manifest(str(tmp_path / "sweep")) == entries


def test_softmax_axis_entries_take_a_3d_or_4d_softmax_over_a_middle_axis():
    entries = softmax_axis_entries(size=20)
    ranks = set()
    for entry in entries:
        assert entry.op == "softmax" and SweepEntry.from_id(entry.id) == entry
        proto = entry.build()
        node = next(n for n in proto.graph.node if n.name == "op")
        dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert next(a.i for a in node.attribute if a.name == "axis") == 1 and len(dims) > 2
        assert dims[1] == entry.p["n"] and 0 < np.prod(dims) <= SOFTMAX_MAX_ELEMENTS
        ranks.add(len(dims))
    assert ranks == {3, 4}
    assert not set(entries) & set(base_entries(size=600)), "its own seed: the base entries stay as they were"


def test_exported_resize_entries_upsample_by_whole_pixels_as_exporters_spell_it():
    entries = exported_resize_entries(size=30)
    scales = set()
    for entry in entries:
        assert entry.op == "memory" and entry.p["kind"] == "resize" and SweepEntry.from_id(entry.id) == entry
        proto = entry.build()
        node = next(n for n in proto.graph.node if n.name == "op")
        attributes = {a.name: a.s.decode() for a in node.attribute}
        assert attributes == {"mode": "nearest", **EXPORTED_NEAREST}
        scale = next(i for i in proto.graph.initializer if i.name == node.input[2])
        assert list(np.frombuffer(scale.raw_data, np.float32)) == [1, 1, entry.p["scale"], entry.p["scale"]]
        assert entry.p["c"] * (entry.p["hw"] * entry.p["scale"]) ** 2 <= RESIZE_MAX_ELEMENTS
        scales.add(entry.p["scale"])
    assert scales == {2, 4, 8}
    default = SweepEntry.from_id("memory:c=24,ctx=1,hw=7,kind=resize").build()  # ids without `coord` stay as they were
    assert {a.name for a in next(n for n in default.graph.node if n.name == "op").attribute} == {"mode"}
    assert not set(entries) & set(base_entries(size=600)), "its own seed: the base entries stay as they were"


def test_excitation_entries_are_a_gates_pool_and_mul_on_small_maps():
    entries = excitation_entries(size=40)
    assert {(e.op, e.p["kind"]) for e in entries} == {("pool", "gap"), ("eltwise", "scale")}
    assert {e.p["hw"] for e in entries} <= set(EXCITATION_RESOLUTIONS)
    assert all(SweepEntry.from_id(e.id) == e for e in entries)
    in_context = [e for e in entries if e.p["ctx"] == 1]
    assert {e.in_context for e in entries} == set(in_context) and len(entries) == 2 * len(in_context)  # twins
    assert not set(entries) & set(base_entries(size=600)), "its own seed: the base entries stay as they were"


def test_a_folder_without_a_manifest_says_how_to_write_one(tmp_path):
    with pytest.raises(TailorError, match=r"nope: no manifest.json \(write one with `onnx-tailor costmodel sweep`\)"):
        read_manifest(tmp_path / "nope")


@pytest.mark.parametrize("content, reason", [
    ({"entries": 3}, "'int' object is not iterable"),
    ({"opset": 17}, "'entries'"),
    ({"entries": [{"id": "resnet50"}]}, "not a sweep id: 'resnet50'"),
    ({"entries": [{"file": "00000_conv.onnx"}]}, "'id'"),
])
def test_a_broken_manifest_is_named_with_the_reason(tmp_path, content, reason):
    (tmp_path / "manifest.json").write_text(json.dumps(content))
    with pytest.raises(TailorError) as caught:
        read_manifest(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'manifest.json'}: not a sweep manifest ({reason})"

