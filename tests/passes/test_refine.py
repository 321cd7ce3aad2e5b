"""passes.refine: the numpy block computes what onnxruntime computes, and its gradients are the true ones."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor.analysis import find_ibn_blocks, match_activation
from onnx_tailor.ir import Model, seeded_inputs
from onnx_tailor.passes.canonicalize import canonicalize
from onnx_tailor.passes.capture import capture
from onnx_tailor.ir.conv_geometry import ConvGeometry
from onnx_tailor.passes.refine import ConvPair, Elementwise, SqueezeExcitation
from tests.graphs import GraphBuilder, ibn_block

SPELLINGS = ["relu", "relu6", "hardswish", "hardswish_decomposed", "swish", "x_hardsigmoid"]


def _block_model(activation: str) -> Model:
    """One IBN block with squeeze-excitation; weights scaled so that activations cross their kinks."""
    b = GraphBuilder(seed=3)
    y = ibn_block(b, "x", 6, 18, 6, k=3, activation=activation, se=True)
    return Model(canonicalize(b.build({"x": (4, 6, 7, 7)}, [y])))


def _values(model: Model, tensors: list[str]) -> dict[str, np.ndarray]:
    feeds = {k: v * 3 for k, v in seeded_inputs(model).items()}
    return capture(model, tensors, feeds)  # the model's fixed batch of 4: one run, on these feeds


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_activation_and_gate_match_onnxruntime(spelling):
    model = _block_model(spelling)
    [block] = find_ibn_blocks(model)
    z_name = model.node(block.depthwise).output[0]
    found = match_activation(model, z_name)
    activation = Elementwise.of(model, z_name, found.nodes, found.output)
    gate = SqueezeExcitation.of(model, block.squeeze_excitation)
    gate_name = next(i for i in model.node(block.squeeze_excitation[-1]).input if i != found.output)
    seen = _values(model, [z_name, found.output, gate_name])
    z = seen[z_name]
    assert np.mean((z > 0) & (z < 6)) < 0.9, "inputs must reach the activation's flat or curved parts"

    value, slope = activation(z)
    np.testing.assert_allclose(value, seen[found.output], rtol=1e-5, atol=1e-5)
    h = 1e-4
    z64 = z.astype(np.float64)
    numeric = (activation(z64 + h)[0] - activation(z64 - h)[0]) / (2 * h)
    np.testing.assert_allclose(activation(z64)[1], numeric, atol=1e-6)
    assert slope.dtype == np.float32

    pooled = seen[found.output].mean(axis=(2, 3))
    np.testing.assert_allclose(gate.forward(pooled)[0], seen[gate_name][:, :, 0, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, attrs", [("Relu", {}), ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                                       ("HardSwish", {}), ("LeakyRelu", {"alpha": 0.1}), ("Tanh", {}),
                                       ("Clip", {"bounds": (-1.0, 2.0)})])
def test_every_single_node_activation_matches_onnxruntime(op, attrs):
    """Each op as written (canonicalization may respell some, e.g. HardSwish as x * HardSigmoid(x))."""
    b = GraphBuilder(seed=2)
    z = b.conv("x", 3, 5, 3)
    bounds = [b.const(np.float32(v)) for v in attrs.pop("bounds", ())]
    out = b.node(op, [z, *bounds], **attrs)
    model = Model(b.build({"x": (2, 3, 6, 6)}, [out]))
    activation = Elementwise.of(model, z, (model.producer(out).name,), out)
    seen = _values(model, [z, out])
    np.testing.assert_allclose(activation(seen[z])[0], seen[out], rtol=1e-5, atol=1e-6)
    z64, h = seen[z].astype(np.float64), 1e-4
    numeric = (activation(z64 + h)[0] - activation(z64 - h)[0]) / (2 * h)
    np.testing.assert_allclose(activation(z64)[1], numeric, atol=1e-6)


def test_an_activation_without_a_derivative_here_is_named():
    b = GraphBuilder(seed=1)
    z = b.conv("x", 4, 4, 3)
    out = b.node("Elu", [z])
    model = Model(canonicalize(b.build({"x": (1, 4, 5, 5)}, [out])))
    reason = Elementwise.of(model, z, (model.producer(out).name,), out)
    assert isinstance(reason, str) and "Elu" in reason


@pytest.mark.parametrize("spelling", ["hardswish", "swish"])
def test_gradients_are_the_derivatives_of_the_loss(spelling):
    """Central differences in float64 agree with `ConvPair.gradients` for every tensor, SE included."""
    model = _block_model(spelling)
    [block] = find_ibn_blocks(model)
    z_name = model.node(block.depthwise).output[0]
    found = match_activation(model, z_name)
    rng = np.random.default_rng(0)
    ce, ci, co = 18, 6, 6
    pair = ConvPair(ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)), Elementwise.of(model, z_name, found.nodes,
                    found.output), SqueezeExcitation.of(model, block.squeeze_excitation),
                    rng.standard_normal((ci * 9, ce)) * 0.5, rng.standard_normal(ce), rng.standard_normal((ce, co)),
                    rng.standard_normal(co))
    x, y = rng.standard_normal((3, ci, 5, 5)), rng.standard_normal((3 * 25, co))

    def loss() -> float:
        out, _ = pair.forward(pair.patches(x), len(x))
        return float(np.sum((out - y) ** 2))

    out, cache = pair.forward(pair.patches(x), len(x))
    gradients = pair.gradients(cache, 2 * (out - y), len(x))
    for tensor, gradient in zip((pair.w1, pair.b1, pair.w2, pair.b2), gradients):
        for index in rng.choice(tensor.size, 5, replace=False):
            position = np.unravel_index(index, tensor.shape)
            kept = tensor[position]
            tensor[position] = kept + 1e-6
            up = loss()
            tensor[position] = kept - 1e-6
            down = loss()
            tensor[position] = kept
            assert gradient[position] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-4)


def _relu6_pair(seed: int = 1) -> tuple[ConvPair, np.ndarray, np.ndarray]:
    """A 6 -> 18 -> 6 relu6 pair (3x3 then 1x1) with random weights, and random 5x5 inputs and targets."""
    model = _block_model("relu6")
    [block] = find_ibn_blocks(model)
    z_name = model.node(block.depthwise).output[0]
    found = match_activation(model, z_name)
    rng = np.random.default_rng(seed)
    ce, ci, co = 18, 6, 6
    pair = ConvPair(ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
                    Elementwise.of(model, z_name, found.nodes, found.output), None,
                    (rng.standard_normal((ci * 9, ce)) * 0.3).astype(np.float32), np.zeros(ce, np.float32),
                    (rng.standard_normal((ce, co)) * 0.3).astype(np.float32), np.zeros(co, np.float32))
    x = rng.standard_normal((7, ci, 5, 5)).astype(np.float32)
    return pair, x, rng.standard_normal((7, co, 5, 5)).astype(np.float32)


def _counting_steps(monkeypatch) -> list:
    from onnx_tailor.passes import refine as refine_module

    taken = []
    real = refine_module.ConvPair.gradients
    monkeypatch.setattr(refine_module.ConvPair, "gradients", lambda *a: taken.append(1) or real(*a))
    return taken


def test_a_refinement_that_has_not_lowered_the_error_by_its_checkpoint_stops_there(monkeypatch):
    """The pair computes its target exactly (L = 0): Adam's first steps can only raise L, so the steps stop
    at GIVE_UP_AT of them and the pair comes back unchanged."""
    from onnx_tailor.passes import refine as refine_module

    pair, x, _ = _relu6_pair()
    exact = pair(x)
    taken = _counting_steps(monkeypatch)
    assert pair.refine(x, exact, steps=100) is pair
    assert len(taken) == round(100 * refine_module.GIVE_UP_AT) < 100


def test_a_refinement_below_its_start_at_the_checkpoint_takes_every_step_to_the_same_bytes(monkeypatch):
    """Random targets: the steps lower L, the checkpoint changes nothing, and the weights are the bytes
    of a refinement without one."""
    from onnx_tailor.passes import refine as refine_module

    pair, x, target = _relu6_pair()
    taken = _counting_steps(monkeypatch)
    checked = pair.refine(x, target, steps=70)
    assert checked is not pair and len(taken) == 70
    monkeypatch.setattr(refine_module, "GIVE_UP_AT", 2.0)  # past the last step: never checked
    unchecked = pair.refine(x, target, steps=70)
    for a, b in zip(checked.onnx_weights(), unchecked.onnx_weights()):
        assert a.tobytes() == b.tobytes()


def test_rows_made_once_give_the_same_refinement_as_rows_made_per_step(monkeypatch):
    """The im2col rows of every sample, made once, are selected for each mini-batch: the refined
    weights are the same bytes as when each step makes its own (as it does over PATCHED_ELEMENTS)."""
    from onnx_tailor.passes import refine as refine_module

    pair, x, target = _relu6_pair()
    monkeypatch.setattr(refine_module, "BATCH_ELEMENTS", 3 * 25 * x.shape[1] * 9)  # mini-batches of 3 of the 7 samples
    made = []
    real = refine_module.patches
    monkeypatch.setattr(refine_module, "patches", lambda *a: made.append(len(a[0])) or real(*a))
    once = pair.refine(x, target, steps=12)
    assert made == [7]
    monkeypatch.setattr(refine_module, "PATCHED_ELEMENTS", 0)
    per_step = pair.refine(x, target, steps=12)
    assert len(made) > 12
    assert once is not pair
    for a, b in zip(once.onnx_weights(), per_step.onnx_weights()):
        assert a.tobytes() == b.tobytes()
