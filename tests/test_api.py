"""The public Python API (`import onnx_tailor as ot`) as a pipeline uses it, and what every written
model and recipe records about where it came from.

The searches run on the tiny synthetic MobileNet with the cosine metric, so that each takes seconds.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnx_tailor as ot
from onnx_tailor import accuracy, search
from onnx_tailor.cli import main
from onnx_tailor.passes.canonicalize import canonicalize
from onnx_tailor.search import read_recipe
from tests.conftest import DIGITS
from tests.graphs import tiny_mobilenet

OPTIONS = dict(metric="cosine", max_drop="0.05", passes=["fuse_ibn_expansion", "pad_channels"])
DOC = "a tiny MobileNet for the tests"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """The tiny model as a user's file: with a description and metadata of its own."""
    proto = tiny_mobilenet()
    proto.doc_string = DOC
    onnx.helper.set_model_props(proto, {"author": "tests"})
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def arrays(tiny_path) -> dict:
    return dict(accuracy.random_dataset(ot.load(tiny_path), samples=64, seed=3).inputs)


@pytest.fixture(scope="module")
def optimized(tiny_path):
    return ot.optimize(tiny_path, "npu-p32", data="random", **OPTIONS)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _props(model_or_proto) -> dict:
    proto = getattr(model_or_proto, "proto", model_or_proto)
    return {p.key: p.value for p in proto.metadata_props}


# -- §5: the Python API -------------------------------------------------------------------------

def test_version_is_the_installed_distributions():
    try:
        expected = importlib.metadata.version("onnx-tailor")
    except importlib.metadata.PackageNotFoundError:
        expected = "0+unknown"
    assert ot.__version__ == expected and "__version__" in ot.__all__
    assert expected in invoke("--version").output


def test_optimize_has_explicit_documented_arguments_mirroring_the_search():
    api = inspect.signature(ot.optimize).parameters
    library = inspect.signature(search.optimize).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in api.values()), "no **options"
    assert set(api) - set(library) == {"input_shapes"} and set(library) - set(api) == set()
    for name, parameter in library.items():
        assert api[name].default == parameter.default, f"{name}: {api[name].default!r} != {parameter.default!r}"
    doc = inspect.getdoc(ot.optimize)
    undocumented = [name for name in api if not re.search(rf"\b{name}\b", doc)]
    assert not undocumented, f"ot.optimize's docstring does not explain {undocumented}"
    assert "module docstring" not in doc and "progress" in doc and "to_dict" in doc


def test_optimize_takes_data_as_a_path_a_dict_of_arrays_or_a_dataset(tiny_path, arrays, tmp_path):
    npz = tmp_path / "data.npz"
    np.savez(npz, **arrays)
    results = [ot.optimize(tiny_path, "npu-p32", data=data, **OPTIONS)
               for data in (str(npz), arrays, accuracy.Dataset(arrays))]
    assert results[0].recipe.steps and results[0].recipe.needs_data
    assert len({r.model.content_hash for r in results}) == 1
    assert len({r.recipe.calibration_fingerprint for r in results}) == 1
    assert results[1].recipe.data["source"] == "in-memory"


def test_progress_gets_one_line_per_search_event(tiny_path):
    messages = []
    ot.optimize(tiny_path, "npu-p32", data="random", progress=messages.append, **OPTIONS)
    assert messages and all(isinstance(m, str) and "\n" not in m for m in messages)
    assert any(m.startswith("best so far:") for m in messages) and any(m.startswith("step 1:") for m in messages)


def json_keys(value):
    """Every key of a JSON payload, at any depth."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from json_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from json_keys(inner)


def test_results_are_typed_and_to_dict_gives_milliseconds(tiny_path, optimized):
    analysis = ot.inspect(tiny_path)
    assert json.loads(json.dumps(analysis.to_dict()))["macs"] == analysis.macs
    cost = ot.score(tiny_path, "npu-p32")
    row = json.loads(json.dumps(cost.to_dict()))
    assert row["latency_ms"] == pytest.approx(cost.latency_s * 1e3)
    assert row["simulated_ms"] == pytest.approx(cost.simulated_s * 1e3)
    assert sum(k["predicted_ms"] for k in row["kernels"]) == pytest.approx(row["latency_ms"], rel=1e-6)
    assert not [k for k in json_keys(row) if k.endswith("_s")], "seconds in a to_dict"
    applied = ot.apply(tiny_path, "pad_channels", params={"multiple": 32})
    row = json.loads(json.dumps(applied.to_dict()))
    assert [s["anchor"] for s in row["sites"]] == [s.anchor for s in applied.sites] and row["sites"]
    row = json.loads(json.dumps(optimized.to_dict()))
    assert row["improved"] is optimized.improved is True
    assert row["recipe"] == optimized.recipe.to_dict() and row["notes"] == optimized.notes
    # every latency in ms; the time budget stays in the seconds the option takes (--time-budget SECONDS)
    latencies = [k for k in json_keys(row) if "latency" in k or (k.endswith("_s") and k != "time_budget_s")]
    assert latencies and all(k.endswith("_ms") for k in latencies), latencies


# -- §6: provenance and the user's own names ------------------------------------------------------

def test_the_written_model_keeps_its_description_and_records_where_it_came_from(tiny_path, optimized):
    props = _props(optimized.model)
    assert optimized.model.proto.doc_string == DOC and props["author"] == "tests"
    assert props["onnx_tailor.version"] == ot.__version__ and props["onnx_tailor.target"] == "npu-p32"
    assert props["onnx_tailor.recipe_hash"] == optimized.recipe.content_hash
    assert _props(optimized.emitted("qdq")) == props and optimized.emitted("qdq").proto.doc_string == DOC
    again = ot.apply_recipe(tiny_path, optimized.recipe, data="random")
    assert again.serialized == optimized.model.serialized  # replay stays byte-identical, metadata included
    applied = ot.apply(tiny_path, "pad_channels", params={"multiple": 32}).model
    assert applied.proto.doc_string == DOC and _props(applied)["onnx_tailor.version"] == ot.__version__
    assert "onnx_tailor.recipe_hash" not in _props(applied)  # one pass applied is no recipe
    # The graph is what recipes and caches identify: description and metadata leave its hash alone.
    assert ot.load(tiny_path).content_hash == ot.Model(canonicalize(tiny_mobilenet())).content_hash


def test_the_recipe_hash_is_of_what_decides_the_model(optimized, tmp_path):
    recipe = optimized.recipe
    recipe.write(tmp_path / "r.json")
    assert read_recipe(tmp_path / "r.json").content_hash == recipe.content_hash
    fewer = type(recipe)(recipe.source_hash, recipe.steps[:-1], recipe.input_shapes, recipe.calibration_fingerprint,
                         recipe.data, recipe.target)
    assert fewer.content_hash != recipe.content_hash


def test_cli_outputs_carry_the_metadata_and_replay_to_the_same_bytes(tiny_path, tmp_path):
    out, recipe = tmp_path / "out.onnx", tmp_path / "recipe.json"
    result = invoke("optimize", tiny_path, "--data", "random", "--metric", "cosine", "--max-drop", "0.05",
                    "--passes", "fuse_ibn_expansion,pad_channels", "-o", out, "--recipe", recipe, "--quiet")
    assert result.exit_code == 0, result.output
    written = onnx.load(str(out))
    assert written.doc_string == DOC
    assert _props(written)["onnx_tailor.recipe_hash"] == read_recipe(recipe).content_hash
    replayed = tmp_path / "replayed.onnx"
    result = invoke("apply", tiny_path, "--recipe", recipe, "-o", replayed)
    assert result.exit_code == 0, result.output
    assert replayed.read_bytes() == out.read_bytes()


def test_a_recipe_finds_its_data_relative_to_itself(tiny_path, arrays, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "recipes").mkdir()
    np.savez(project / "data" / "eval.npz", **arrays)
    result = ot.optimize(tiny_path, "npu-p32", data=str(project / "data" / "eval.npz"), **OPTIONS)
    assert result.recipe.needs_data
    result.recipe.write(project / "recipes" / "r.json")
    stored = json.loads((project / "recipes" / "r.json").read_text())["calibration"]
    assert stored["source"] == "../data/eval.npz" and stored["fingerprint"] == result.recipe.calibration_fingerprint

    moved = tmp_path / "moved"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)  # neither the recipe's folder nor the data's
    again = ot.apply_recipe(tiny_path, moved / "recipes" / "r.json")
    assert again.serialized == result.model.serialized
    out = tmp_path / "replayed.onnx"
    assert invoke("apply", tiny_path, "--recipe", "moved/recipes/r.json", "-o", out).exit_code == 0

    (moved / "data" / "eval.npz").rename(tmp_path / "elsewhere.npz")
    missing = invoke("apply", tiny_path, "--recipe", "moved/recipes/r.json", "-o", out)
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    [line] = missing.output.strip().splitlines()
    assert "moved/recipes/r.json" in line and "--data" in line and "eval.npz" in line
    given = invoke("apply", tiny_path, "--recipe", "moved/recipes/r.json", "--data", "elsewhere.npz", "-o", out)
    assert given.exit_code == 0, given.output


def test_inspect_counts_ops_and_names_the_peak_node_as_given():
    given, canonical = ot.inspect(DIGITS.path), ot.inspect(DIGITS.path, canonical=True)
    assert (given.form, canonical.form) == ("as given", "canonical")
    file_nodes = onnx.load(str(DIGITS.path)).graph.node
    assert given.op_histogram["HardSwish"] == sum(n.op_type == "HardSwish" for n in file_nodes) == 11
    assert given.op_histogram["BatchNormalization"] > 0 and "BatchNormalization" not in canonical.op_histogram
    assert "HardSwish" not in canonical.op_histogram
    assert given.peak_at in {n.name for n in file_nodes}
    assert (given.macs, given.blocks) == (canonical.macs, canonical.blocks)  # counted on the canonical form

    output = invoke("inspect", DIGITS.path).output
    assert "HardSwish 11" in output and "nodes as given" in output
    assert "HardSwish" not in invoke("inspect", DIGITS.path, "--canonical").output
    assert json.loads(invoke("inspect", DIGITS.path, "--json").output)["form"] == "as given"


def test_inspect_names_an_unnamed_node_by_what_it_writes(tmp_path):
    proto = tiny_mobilenet()
    for node in proto.graph.node:
        node.name = ""
    path = tmp_path / "unnamed.onnx"
    onnx.save(proto, str(path))
    given, canonical = ot.inspect(path), ot.inspect(path, canonical=True)
    match = re.fullmatch(r"(\w+) writing '(.+)'", given.peak_at)
    assert match, given.peak_at
    assert any(n.op_type == match[1] and n.output[0] == match[2] for n in proto.graph.node)
    assert re.fullmatch(r"\w+_\d+", canonical.peak_at)  # canonical form names the node itself


def test_inspect_falls_back_to_canonical_figures_when_the_model_as_given_has_unknown_shapes(monkeypatch):
    from onnx_tailor import api
    from onnx_tailor.errors import InputShapeError

    def unknown(*args):
        raise InputShapeError("input 'x' needs a shape")

    monkeypatch.setattr(api, "in_given_terms", unknown)
    report = ot.inspect(DIGITS.path)
    assert report.form == "canonical" and report.op_histogram == ot.inspect(DIGITS.path, canonical=True).op_histogram
    assert any("as given, input 'x' needs a shape" in w for w in report.warnings)
