"""Fixtures for the accuracy tests: the digits model, its evaluation set, perturbed copies."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_tailor import accuracy
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import load
from tests.conftest import DIGITS, MODELS

DIGITS_EVAL = MODELS / "digits_eval.npz"


def perturb(model: Model, noise: float, seed: int = 0) -> Model:
    """`model` with seeded Gaussian noise (`noise` times each weight tensor's std) on every Conv weight."""
    rng = np.random.default_rng(seed)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    weights = {node.input[1] for node in proto.graph.node if node.op_type == "Conv"}
    for tensor in proto.graph.initializer:
        if tensor.name in weights:
            w = numpy_helper.to_array(tensor)
            noisy = (w + noise * w.std() * rng.standard_normal(w.shape)).astype(w.dtype)
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    return model.with_proto(proto)


@pytest.fixture(scope="session")
def digits() -> Model:
    return load(DIGITS.path)


@pytest.fixture(scope="session")
def digits_data(digits) -> accuracy.Dataset:
    return accuracy.load_data(DIGITS_EVAL, digits)


@pytest.fixture(scope="session")
def noisy_digits(digits) -> Model:
    """Clearly worse than the original (about 96 % agreement), still a working classifier."""
    return perturb(digits, 0.2)


def identity_model(inputs: dict[str, tuple[int, list]]) -> Model:
    """A model passing each input (name -> (element type, dims)) straight to an output."""
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in inputs]
    graph = helper.make_graph(
        nodes, "identity",
        [helper.make_tensor_value_info(name, elem, dims) for name, (elem, dims) in inputs.items()],
        [helper.make_tensor_value_info(f"{name}_out", elem, dims) for name, (elem, dims) in inputs.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return Model(proto)


FLOAT = TensorProto.FLOAT
