"""Reading intermediate tensors of a model on calibration inputs.

Data-aware passes fit weights to what a layer actually sees: they run the
model once with the tensors they need exposed as extra outputs. `calib` is
always the calibration split's inputs (a dict from model input name to its
samples, `[N, ...]`, the layout of `accuracy.Dataset`); never the evaluation
split, which only judges. The samples run as `ir.run_samples` feeds them: in
batches of the model's fixed size when it fixes one, with each tensor joined
along its own batch axis.

Inside a search a `tensor_cache.TensorCache` is active: values come from it
where a model computes them as one seen before, and one run computes what is
missing (see that module). Unoptimized single-threaded onnxruntime computes a
tensor the same whatever else a run exposes, so cached values are the very
bytes a fresh run would give. That run is of the cut (`ir.cut`): only the
nodes between the nearest cached tensors and the missing ones, fed the cached
values batch by batch as the whole model's run was batched, so it gives the
same bytes as running the whole model from its inputs. A fit inside a block
then runs the block, not the network above it.
"""

from __future__ import annotations

import numpy as np

from ..ir import Model, run_samples
from ..ir.cut import cut_inputs, run_cut
from ..ir.runtime import exposing_session, representative_inputs
from .tensor_cache import TensorCache, active_cache

Calibration = dict[str, np.ndarray]


def capture(model: Model, tensors: list[str], calib: Calibration | None, pinned: bool = False) -> dict[str, np.ndarray]:
    """Values of `tensors` on the calibration inputs (`representative_inputs` when there are none).

    With a cache active, `pinned` keeps what this run computes longest (the reference's tensors)."""
    cache = active_cache()
    # Without data: one batch at the model's own input shapes, already as the model takes it.
    feeds = representative_inputs(model) if calib is None else calib
    if cache is None:
        return _computed(model, tensors, feeds, calib is None)[0]
    data = ("one:" if calib is None else "samples:") + cache.fingerprint(feeds)
    found = cache.lookup(model, list(dict.fromkeys(tensors)), data)
    missing = [t for t in dict.fromkeys(tensors) if t not in found]
    if missing:
        samples = 1 if calib is None else len(next(iter(calib.values())))
        computed, axes = _computed_from_cache(cache, model, cache.wanted(model, data, missing, samples), feeds,
                                              calib is None, data)
        cache.stats.runs += 1
        cache.store(model, computed, data, pinned, axes)
        found.update({t: computed[t] for t in missing})
    return {t: found[t] for t in tensors}


def _computed_from_cache(cache: TensorCache, model: Model, tensors: list[str], feeds: dict[str, np.ndarray],
                         one_batch: bool, data: str) -> tuple[dict[str, np.ndarray], dict[str, int | None] | None]:
    """`tensors` by a run of their cut from the nearest cached tensors (module docstring), and each one's
    batch axis (None for one batch). A cached tensor joined without a batch axis cannot be split into the
    whole run's batches: the walk goes on past it."""
    def known(tensor: str) -> bool:
        kept, axis = cache.batch_axis(model, tensor, data)
        return kept and (one_batch or axis is not None)

    nodes, starts = cut_inputs(model, tensors, known)
    from_cache = [t for t in starts if not model.is_graph_input(t)]
    if not from_cache:  # nothing upstream is cached: the whole model, as without a cache
        return _computed(model, tensors, feeds, one_batch)
    values = cache.lookup(model, from_cache, data)
    values.update({t: feeds[t] for t in starts if model.is_graph_input(t)})
    axes = None if one_batch else {t: cache.batch_axis(model, t, data)[1] for t in from_cache}
    cache.stats.cut_runs += 1
    return run_cut(model, tensors, nodes, values, axes, "the calibration data")


def _computed(model: Model, tensors: list[str], feeds: dict[str, np.ndarray], one_batch: bool) -> tuple[
        dict[str, np.ndarray], dict[str, int | None] | None]:
    """`tensors` by a run of the whole model, and their batch axes (None for one batch)."""
    # The model with `tensors` as outputs, without a copy of its weights (a copy per capture was the
    # peak of memory on large models): its proto gives the batch axes, its session runs.
    proto, sess = exposing_session(model, tensors)
    names = [o.name for o in sess.get_outputs()]

    def runner(batch):
        return dict(zip(names, sess.run(names, batch)))

    if one_batch:
        outputs, axes = runner(feeds), None
    else:
        outputs, axes = run_samples(model.with_proto(proto), feeds, runner=runner, what="the calibration data")
    return {t: outputs[t] for t in tensors}, axes


def capture_fit(model: Model, inputs: list[str], targets: list[str], calib: Calibration | None,
                reference: Model | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What a lossy fit on `model` reads and aims for, with one run of each model: `inputs` as `model`
    computes them, and `targets` as `reference` (the model a sequence of rewrites started from) does
    where it has them with the same shape, elsewhere as `model` does.

    Aiming at the reference rather than at the already rewritten network lets a later step make up
    for the error earlier steps left upstream, instead of preserving it."""
    own = capture(model, [*inputs, *targets], calib)
    shared = [t for t in targets if reference is not None and reference is not model
              and reference.producer(t) is not None]
    theirs = capture(reference, shared, calib, pinned=True) if shared else {}
    aimed = {t: theirs[t] if t in theirs and theirs[t].shape == own[t].shape else own[t] for t in targets}
    return {t: own[t] for t in inputs}, aimed
