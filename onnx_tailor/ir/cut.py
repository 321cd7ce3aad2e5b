"""Running part of a model: only the nodes between tensors already known and the tensors wanted.

A fit asks for tensors inside a model whose upstream tensors were often
computed already (its parent's, or the original's, on the same inputs).
Running the model from its inputs again computes them all once more. The cut
of `wanted` above `known` is the smallest piece of the graph that computes
`wanted` from the nearest known tensors (or from graph inputs where no
tensor on the way is known): walking back from each wanted tensor, a known
tensor ends the walk and becomes an input of the cut; constants stay
constants. Its session takes those tensors as feeds.

onnxruntime without graph optimizations runs each node of the cut with the
same kernel on the same input bytes as the whole model would, so the cut
computes the very bytes a whole run gives, as long as it is fed what the
whole run computed, batch by batch as that run was batched (`run_cut`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from .batch import BatchLayout, batch_layout, run_samples
from .large import light_session, lighten
from .model import Model
from .runtime import light_cpu_session


def cut_inputs(model: Model, wanted: list[str], known: Callable[[str], bool]) -> tuple[list[onnx.NodeProto], list[str]]:
    """(the nodes that compute `wanted`, in the model's order; the tensors they start from): known tensors
    nearest to `wanted` on every path back, and graph inputs where a path meets none. A wanted tensor is
    computed even when `known` accepts it."""
    chosen: dict[int, onnx.NodeProto] = {}
    starts: dict[str, None] = {}
    asked = set(wanted)
    seen: set[str] = set()
    pending = list(dict.fromkeys(wanted))
    while pending:
        tensor = pending.pop()
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        producer = model.producer(tensor)
        if producer is None:
            if model.is_graph_input(tensor):
                starts[tensor] = None
            continue  # a constant: the cut keeps it
        if tensor not in asked and known(tensor):
            starts[tensor] = None
            continue
        if id(producer) not in chosen:
            chosen[id(producer)] = producer
            pending.extend(model.reads(producer))
    nodes = [node for node in model.graph.node if id(node) in chosen]
    return nodes, sorted(starts)


def cut_session(model: Model, wanted: list[str], nodes: list[onnx.NodeProto],
                starts: Mapping[str, tuple[np.dtype, list]]) -> tuple[Model, ort.InferenceSession]:
    """The cut (`nodes`, fed `starts`: each one's dtype and shape in one run, None for a free dimension) as
    a model with `wanted` as its outputs, and an unoptimized single-threaded session of it, without
    copying the weights (the light form, as `runtime.exposing_session`)."""
    light = lighten(model.proto)
    graph = light.proto.graph
    kept = {id(node) for node in nodes}
    retained = [copy for node, copy in zip(model.graph.node, graph.node) if id(node) in kept]  # the same order
    read = {name for node in nodes for name in model.reads(node)}
    initializers = [t for t in graph.initializer if t.name in read and t.name not in starts]
    inputs = [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)
              for name, (dtype, shape) in starts.items()]
    for field, values in ((graph.node, retained), (graph.initializer, initializers), (graph.input, inputs),
                          (graph.output, [onnx.ValueInfoProto(name=t) for t in dict.fromkeys(wanted)])):
        del field[:]
        field.extend(values)
    light.held = {name: tensor for name, tensor in light.held.items() if name in read}
    return Model(light.proto), light_cpu_session(light)


def run_cut(model: Model, wanted: list[str], nodes: list[onnx.NodeProto], starts: Mapping[str, np.ndarray],
            axes: Mapping[str, int | None] | None, what: str) -> tuple[dict[str, np.ndarray],
                                                                       dict[str, int | None] | None]:
    """`wanted` computed by the cut from `starts`, and the batch axis each was joined along (None for one run).

    `axes` None: `starts` are one run's values (a model run once on one batch of feeds). Otherwise `starts`
    hold every sample: a graph input in samples layout, any other tensor joined along its batch axis
    (`axes`, as `run_samples` joined it). The cut then runs batch by batch as `run_samples` runs the whole
    model (the same batches, so the same bytes), and its outputs come back joined the same way."""
    if axes is None:
        typed = {name: (value.dtype, list(value.shape)) for name, value in starts.items()}
        sub, sess = cut_session(model, wanted, nodes, typed)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, dict(starts)))), None
    layout = batch_layout(model)
    samples, inputs = {}, {}
    for name, value in starts.items():
        if model.is_graph_input(name):  # already in samples layout
            samples[name], inputs[name] = value, layout.inputs[name]
        else:
            samples[name], inputs[name] = np.moveaxis(value, axes[name], 0), axes[name]
    cut_layout = BatchLayout(inputs, layout.fixed, layout.name)
    typed = {}
    for name, array in samples.items():  # one sample's shape, the batch put back on its axis as a free dimension
        shape: list = list(array.shape[1:])
        if inputs[name] is not None:
            shape.insert(inputs[name], None)
        typed[name] = (array.dtype, shape)
    sub, sess = cut_session(model, wanted, nodes, typed)
    names = [o.name for o in sess.get_outputs()]

    def runner(batch):
        return dict(zip(names, sess.run(names, batch)))

    return run_samples(sub, samples, runner=runner, what=what, layout=cut_layout)
