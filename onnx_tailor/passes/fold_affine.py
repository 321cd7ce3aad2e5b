"""fold_affine: fold constant scale/shift ops into the Conv, ConvTranspose, Gemm or MatMul beside them.

Exporters spell a per-channel affine map y = x * s + t many ways: Mul, Add,
Sub, Div by a constant, a BatchNormalization that does not follow a Conv
directly, and the scalar Mul + Add pairs that reparameterized networks
(PP-LCNetV3, MobileOne) wrap around every activation ("learnable affine
blocks"). A run of them is one affine map, and it folds into the weights of
the layer before or after it:

After a layer (its output feeds only the run):
    x -> Conv(W, b) -> Mul(s) -> Add(t) -> y     =>   x -> Conv(W * s, b * s + t) -> y
    (ConvTranspose and Gemm alike; MatMul has no bias, so a shift stays as one Add(t))
Before a layer (the run's output feeds only the layer):
    x -> Mul(s) -> Add(t) -> Conv(W, b) -> y     =>   x -> Conv(W * s, b + sum(W * t)) -> y
    when the Conv pads nothing (Gemm alike). A padded Conv pads the scaled
    input with zeros, so the scale folds but a shift would be wrong at the
    borders; it stays, divided by the scale: x -> Add(t / s) -> Conv(W * s)
    (MatMul alike, having no bias to take it).

Conditions: the constants broadcast per channel (the channel axis is 1 for
Conv, the last axis for Gemm/MatMul): shape [1, C, 1, 1], [C, 1, 1] or a
scalar; anything else (e.g. [C] on NCHW, which is per column) is not. Every
tensor inside the run has one reader and is not a graph output; the layer's
weights (and bias) are constants of the same float type, read by the layer
only; a site is rewritten only when it removes nodes. Exact up to float
rounding. Canonicalization folds every site (`fold_all_affine`), after
`fold_batchnorm` has taken each BatchNormalization that follows a Conv
directly; a BatchNormalization here is one that did not (after an Add, a
ConvTranspose, or before a layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..ir import Model
from ..ir.conv_geometry import ConvGeometry
from ..ir.shapes import infer_shapes
from .graph_edit import constant_input, fresh_name, nodes_by_name, set_constant_input

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
_LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass(frozen=True)
class Affine:
    """y = x * scale + shift, both float64 vectors over the channel axis (length C)."""

    scale: np.ndarray
    shift: np.ndarray

    def then(self, other: "Affine") -> "Affine":
        return Affine(self.scale * other.scale, self.shift * other.scale + other.shift)

    @property
    def has_scale(self) -> bool:
        return not np.all(self.scale == 1.0)

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.shift != 0.0))


@dataclass(frozen=True)
class Layout:
    """Where the channels are in a tensor the layer reads or writes."""

    rank: int
    axis: int  # non-negative
    channels: int


@dataclass(frozen=True)
class AffineRun:
    """A fold site: the run of affine nodes (graph order) on one side of `layer`, and their composition."""

    layer: str
    side: str  # "output": the run follows the layer; "input": it precedes it
    nodes: tuple[str, ...]
    affine: Affine
    keep_shift: bool  # the shift cannot fold here and stays as one Add


def find_affine_runs(model: Model) -> list[AffineRun]:
    """Every foldable run, output side first; runs may overlap (see `fold_all_affine`)."""
    runs = []
    for side, find in (("output", _output_run), ("input", _input_run)):
        for layer in model.nodes:
            if layer.op_type in _LAYERS and _weights_are_ours(model, layer):
                run = find(model, layer)
                if run is not None:
                    runs.append(run)
    return runs


def fold_all_affine(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every run (used by canonicalize). Runs that share a node fold in later rounds.

    Returns `proto` itself when nothing folds."""
    model = Model(infer_shapes(proto))  # a MatMul's channel axis is its input's last: the rank must be known
    folded = False
    while True:
        chosen, touched = [], set()
        for run in find_affine_runs(model):
            members = {run.layer, *run.nodes}
            if not members & touched:
                chosen.append(run)
                touched |= members
        if not chosen:
            return model.proto if folded else proto
        graph = model.to_graphsurgeon()
        by_name = nodes_by_name(graph)
        for run in chosen:
            _fold(graph, by_name, run)
        model, folded = model.from_graphsurgeon(graph), True


# -- finding runs ------------------------------------------------------------------------


def _weights_are_ours(model: Model, layer: onnx.NodeProto) -> bool:
    """The weight (and bias) are float constants that only this layer reads; sharing would duplicate them."""
    weight = model.initializer(layer.input[1]) if len(layer.input) > 1 else None
    if weight is None or weight.data_type not in _FLOATS:
        return False
    if layer.op_type == "MatMul" and len(weight.dims) != 2:
        return False
    if layer.op_type == "Gemm" and model.attr(layer, "transA", 0):
        return False
    extra = [t for t in layer.input[2:3] if t]
    if any(not model.is_constant(t) or model.initializer(t).data_type != weight.data_type for t in extra):
        return False
    return all(len(model.consumers(t)) == 1 for t in [layer.input[1], *extra])


def _layout(model: Model, layer: onnx.NodeProto, side: str) -> Layout | None:
    """Rank, channel axis and channel count of the layer's output (or input) tensor."""
    weight = model.initializer(layer.input[1]).dims
    group = model.attr(layer, "group", 1)
    op = layer.op_type
    if op == "Conv":
        return Layout(len(weight), 1, weight[0] if side == "output" else weight[1] * group)
    if op == "ConvTranspose":
        return Layout(len(weight), 1, weight[1] * group) if side == "output" else None
    if op == "Gemm":
        k, n = (weight[1], weight[0]) if model.attr(layer, "transB", 0) else (weight[0], weight[1])
        return Layout(2, 1, n if side == "output" else k)
    shape = model.declared_shape(layer.output[0] if side == "output" else layer.input[0])
    if not shape:
        return None
    return Layout(len(shape), len(shape) - 1, weight[1] if side == "output" else weight[0])


def _output_run(model: Model, layer: onnx.NodeProto) -> AffineRun | None:
    layout = _layout(model, layer, "output")
    if layout is None:
        return None
    nodes, affine, tensor = [], None, layer.output[0]
    while (reader := model.sole_consumer(tensor)) is not None:
        step = _affine_of(model, reader, tensor, layout)
        if step is None:
            break
        nodes.append(reader.name)
        affine = step if affine is None else affine.then(step)
        tensor = reader.output[0]
    if not nodes:
        return None
    keep_shift = layer.op_type == "MatMul" and affine.has_shift
    if keep_shift and (len(nodes) == 1 or not affine.has_scale):
        return None  # MatMul + Add(bias): nothing to remove
    return AffineRun(layer.name, "output", tuple(nodes), affine, keep_shift)


def _input_run(model: Model, layer: onnx.NodeProto) -> AffineRun | None:
    layout = _layout(model, layer, "input")
    if layout is None:
        return None
    nodes, affine, tensor = [], None, layer.input[0]
    while (writer := model.producer(tensor)) is not None and model.sole_consumer(tensor) is not None:
        tensor = _activation_input(model, writer)
        step = _affine_of(model, writer, tensor, layout)
        if step is None or not _has_every_channel(model, tensor, layout):
            break
        nodes.insert(0, writer.name)
        affine = step if affine is None else step.then(affine)  # walking backwards: earlier steps go first
    if not nodes:
        return None
    keep_shift = affine.has_shift and not _takes_input_shift(model, layer)
    if keep_shift and (not affine.has_scale or np.any(affine.scale == 0.0) or len(nodes) == 1):
        return None  # the shift cannot fold and nothing else would go
    return AffineRun(layer.name, "input", tuple(nodes), affine, keep_shift)


def _has_every_channel(model: Model, tensor: str, layout: Layout) -> bool:
    """Whether `tensor` already has the layer's input shape along the channels: x[1, 1, H, W] * s[1, C, 1, 1]
    broadcasts x to C channels, and folding s away would leave the layer one channel."""
    shape = model.declared_shape(tensor)
    return shape is not None and len(shape) == layout.rank and shape[layout.axis] == layout.channels


def _takes_input_shift(model: Model, layer: onnx.NodeProto) -> bool:
    """Whether a constant added to the input can move into the bias: only where no padding is read."""
    if layer.op_type == "Gemm":
        return True
    if layer.op_type != "Conv":
        return False
    return ConvGeometry.of(model, layer).pads_nothing


def _activation_input(model: Model, node: onnx.NodeProto) -> str:
    """The one input of an affine node that is not a constant (its data input for BatchNormalization)."""
    if node.op_type == "BatchNormalization":
        return node.input[0]
    return next((i for i in node.input if not model.is_constant(i)), "")


def _affine_of(model: Model, node: onnx.NodeProto, data: str, layout: Layout) -> Affine | None:
    """`node` as y = data * s + t over the layout's channels, or None when it is not one."""
    if node.op_type == "BatchNormalization":
        return _batchnorm_affine(model, node, layout)
    if node.op_type not in ("Mul", "Add", "Sub", "Div") or len(node.input) != 2 or data not in node.input:
        return None
    other = node.input[1] if node.input[0] == data else node.input[0]
    if other == data or not _float_constant(model, other):
        return None
    value = _per_channel(model.constant(other), layout)
    if value is None:
        return None
    ones, zeros = np.ones(layout.channels), np.zeros(layout.channels)
    data_first = node.input[0] == data
    if node.op_type == "Mul":
        return Affine(value, zeros)
    if node.op_type == "Add":
        return Affine(ones, value)
    if node.op_type == "Sub":
        return Affine(ones, -value) if data_first else Affine(-ones, value)
    if not data_first or np.any(value == 0.0):  # c / x is not affine; x / 0 is no number
        return None
    return Affine(1.0 / value, zeros)


def _batchnorm_affine(model: Model, node: onnx.NodeProto, layout: Layout) -> Affine | None:
    """An inference BatchNormalization (constant parameters, channel axis 1) as scale and shift."""
    if len([o for o in node.output if o]) > 1 or layout.axis != 1 or len(node.input) < 5:
        return None
    if not all(_float_constant(model, t) for t in node.input[1:5]):
        return None
    gamma, beta, mean, var = (model.constant(t).astype(np.float64).reshape(-1) for t in node.input[1:5])
    if gamma.size != layout.channels:
        return None
    scale = gamma / np.sqrt(var + float(model.attr(node, "epsilon", 1e-5)))
    return Affine(scale, beta - mean * scale)


def _float_constant(model: Model, tensor: str) -> bool:
    init = model.initializer(tensor)
    return init is not None and init.data_type in _FLOATS


def _per_channel(value: np.ndarray, layout: Layout) -> np.ndarray | None:
    """`value` as a length-C vector when it broadcasts over the channel axis only; else None.

    Broadcasting aligns shapes on the right: [C, 1, 1] against NCHW is per
    channel, [C] against NCHW is per column, and a constant of higher rank
    than the tensor would change the output's shape.
    """
    if value.ndim > layout.rank:
        return None
    aligned = value.reshape((1,) * (layout.rank - value.ndim) + value.shape)
    if any(size != 1 for axis, size in enumerate(aligned.shape) if axis != layout.axis):
        return None
    if aligned.shape[layout.axis] not in (1, layout.channels):
        return None
    return np.broadcast_to(aligned.reshape(-1).astype(np.float64), (layout.channels,)).copy()


# -- folding ---------------------------------------------------------------------------------


def _fold(graph: gs.Graph, by_name: dict[str, gs.Node], run: AffineRun) -> None:
    layer = by_name[run.layer]
    nodes = [by_name[name] for name in run.nodes]
    dtype = constant_input(layer, 1).dtype
    if run.side == "output":
        _fold_after(graph, layer, run.affine, run.keep_shift)
        final = list(nodes[-1].outputs)  # its readers (or the graph output) keep their tensor
        nodes[-1].outputs.clear()
        if run.keep_shift:
            between = gs.Variable(fresh_name(graph, f"{layer.name}.unshifted"), dtype=dtype)
            layer.outputs = [between]
            _add(graph, run.nodes[-1], between, _channel_shaped(run.affine.shift, layer), final[0])
        else:
            layer.outputs = final
    else:
        _fold_before(graph, layer, run.affine, run.keep_shift)
        source = nodes[0].inputs[0] if nodes[0].op == "BatchNormalization" else \
            next(t for t in nodes[0].inputs if not isinstance(t, gs.Constant))
        if run.keep_shift:
            shifted = gs.Variable(fresh_name(graph, f"{layer.name}.shifted_input"), dtype=dtype)
            _add(graph, fresh_name(graph, f"{layer.name}.input_shift"), source,
                 _channel_shaped(run.affine.shift / run.affine.scale, layer), shifted)
            source = shifted
        layer.inputs[0] = source
    for node in nodes:
        node.outputs.clear()


def _add(graph: gs.Graph, name: str, source: gs.Tensor, value: np.ndarray, out: gs.Variable) -> None:
    const = gs.Constant(fresh_name(graph, f"{name}.shift"), np.array(value))  # a fresh copy; 0-d stays 0-d
    graph.nodes.append(gs.Node("Add", name, inputs=[source, const], outputs=[out]))


def _channel_shaped(vector: np.ndarray, layer: gs.Node) -> np.ndarray:
    """The shift that stays, in the layer's dtype: a scalar when every channel has the same
    value (as the export spelled it), else shaped [C, 1, ...] for a Conv and [C] for a MatMul."""
    weight = constant_input(layer, 1)
    if np.all(vector == vector[0]):
        return np.asarray(vector[0], dtype=weight.dtype)
    trailing = (1,) * (weight.ndim - 2) if layer.op == "Conv" else ()
    return vector.reshape((-1,) + trailing).astype(weight.dtype)


def _fold_after(graph: gs.Graph, layer: gs.Node, affine: Affine, keep_shift: bool) -> None:
    """Scale the layer's output channels; add the shift to its bias (unless it stays behind)."""
    weight = constant_input(layer, 1)
    dtype = weight.dtype
    scale = affine.scale
    if layer.op == "Conv":
        new_weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    elif layer.op == "ConvTranspose":  # [C_in, C_out / group, k...]: output channel g * C_out/group + j
        group = layer.attrs.get("group", 1)
        per_group = scale.reshape(group, 1, -1, *(1,) * (weight.ndim - 2))
        new_weight = (weight.reshape(group, -1, *weight.shape[1:]) * per_group).reshape(weight.shape)
    elif layer.op == "Gemm" and layer.attrs.get("transB", 0):
        new_weight = weight * scale[:, None]
    else:  # Gemm [K, N], MatMul [K, N]
        new_weight = weight * scale[None, :]
    set_constant_input(graph, layer, 1, new_weight.astype(dtype), "weight_affine")
    if layer.op == "MatMul":
        return
    shift = 0.0 if keep_shift else affine.shift
    bias = constant_input(layer, 2)
    if layer.op == "Gemm":
        beta = float(layer.attrs.get("beta", 1.0))
        bias = (bias.astype(np.float64) * beta) if bias is not None else np.zeros(scale.size)
        layer.attrs["beta"] = 1.0
        set_constant_input(graph, layer, 2, (bias * scale + shift).astype(dtype), "bias_affine")
        return
    bias = bias.astype(np.float64) if bias is not None else np.zeros(scale.size)
    set_constant_input(graph, layer, 2, (bias * scale + shift).astype(dtype), "bias_affine")


def _fold_before(graph: gs.Graph, layer: gs.Node, affine: Affine, keep_shift: bool) -> None:
    """Scale the layer's input channels in its weights; move the shift into its bias when it may."""
    weight = constant_input(layer, 1)
    dtype = weight.dtype
    wide = weight.astype(np.float64)
    if layer.op == "Conv":  # [C_out, C_in / group, k...]: input channel (o // per_group_out) * C_in/group + j
        group = layer.attrs.get("group", 1)
        out_channels, in_per_group = weight.shape[:2]
        index = (np.arange(out_channels) // (out_channels // group))[:, None] * in_per_group + np.arange(in_per_group)
        tail = (1,) * (weight.ndim - 2)
        new_weight = wide * affine.scale[index].reshape(index.shape + tail)
        moved = (wide * affine.shift[index].reshape(index.shape + tail)).sum(axis=tuple(range(1, weight.ndim)))
    else:
        transposed = layer.op == "Gemm" and layer.attrs.get("transB", 0)
        matrix = wide.T if transposed else wide  # [K, N]
        scaled = matrix * affine.scale[:, None]
        new_weight = scaled.T if transposed else scaled
        moved = float(layer.attrs.get("alpha", 1.0)) * (affine.shift @ matrix)
    set_constant_input(graph, layer, 1, new_weight.astype(dtype), "weight_affine")
    if keep_shift or not affine.has_shift:
        return
    bias = constant_input(layer, 2)
    bias = bias.astype(np.float64) if bias is not None else np.zeros(moved.size)
    if layer.op == "Gemm":
        bias = bias * float(layer.attrs.get("beta", 1.0))
        layer.attrs["beta"] = 1.0
    set_constant_input(graph, layer, 2, (bias + moved).astype(dtype), "bias_affine")
