"""Running models over datasets and scoring them, with the original model's outputs run once.

`Evaluator` runs a `Model` with onnxruntime in batches (`ir.run_samples`: the
model's own batch size when it fixes one, each output joined along its own
batch axis and returned samples first, as metrics read it) and keeps the
outputs of reference (original) models in a small cache keyed by the
model's content hash and the dataset's fingerprint: a search that scores
hundreds of variants against one original runs the original once. Variants'
outputs are not cached (each is run once, and there are many); running a
model that is in the cache, e.g. the original scored against itself, reuses it.

By default models run as `ir.runtime.session` makes them: every onnxruntime
graph optimization off (`ORT_DISABLE_ALL`, so what is scored is the graph as
written, not ORT's rewrite of it) on one thread, so that scores repeat
exactly. Both are parameters. On the digits model (360 samples, one CPU
thread) batches of 16 to 64 take about 0.5 s, all 360 at once 0.7 s;
`ORT_ENABLE_ALL` takes about 0.2 s, at the cost of scoring ORT's fused graph.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import MetricError
from ..ir import Model, batch_layout, run_samples, session
from .data import Dataset, validate
from .intervals import interval_warnings
from .metrics import FIDELITY, Metric, Outputs, get_metric, is_class_scores
from .score import Score

DEFAULT_BATCH_SIZE = 64


class Evaluator:
    """Runs models in batches of `batch_size` samples and caches reference outputs (see the module docstring)."""

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE,
                 optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                 threads: int = 1, cache_size: int = 4):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.batch_size = batch_size
        self.optimization = optimization
        self.threads = threads
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
        self.runs = 0  # models actually run, cache hits excluded: shows whether the cache works
        self.unbatched: set[str] = set()  # outputs left out of `run` for having no batch axis

    # -- running -----------------------------------------------------------------------

    def run(self, model: Model, dataset: Dataset, batches: bool | None = None) -> dict[str, np.ndarray]:
        """Every graph output of `model` on every sample of `dataset` ([N, ...] each, in output order).

        `batches`: whether some output grows with the samples fed in one run (`batches`), when the caller
        knows already; None finds out with an extra run of two samples."""
        key = (model.content_hash, dataset.fingerprint)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        return self._execute(model, dataset, batches)

    def reference_outputs(self, model: Model, dataset: Dataset, batches: bool | None = None) -> dict[str, np.ndarray]:
        """Like `run`, and keep the result: for the original model that variants are judged against."""
        outputs = self.run(model, dataset, batches)
        for array in outputs.values():  # shared by every later caller: nobody may edit it
            array.flags.writeable = False
        key = (model.content_hash, dataset.fingerprint)
        self._cache[key] = outputs
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return outputs

    def batches(self, model: Model, dataset: Dataset) -> bool:
        """Whether some output of `model` grows with the samples fed in one run (two, to find out): a model
        whose outputs do not (ddddocr's quantized CRNN gives [3, 1, 8210] for any batch) runs sample by
        sample. A search asks once for its original: rewrites keep how the outputs grow with the batch."""
        data = validate(dataset, model)
        if len(data) < 2:
            return True  # nothing to tell apart: one sample runs alone either way
        sess = session(model, self.optimization, self.threads)
        return self._batches(model, data, _runner(sess))

    def _execute(self, model: Model, dataset: Dataset, batches: bool | None) -> dict[str, np.ndarray]:
        data = validate(dataset, model)
        sess = session(model, self.optimization, self.threads)
        names = [o.name for o in sess.get_outputs()]
        runner = _runner(sess)

        # run_samples feeds batches the model accepts (its fixed batch, if it has one) and joins each
        # output along its own batch axis; metrics read one row per sample, so that axis comes first.
        if batches is None:
            batches = len(data) < 2 or self._batches(model, data, runner)
        if len(data) > 1 and not batches:
            return self._one_by_one(model, data, runner, names)
        outputs, axes = run_samples(model, data.inputs, self.batch_size, runner, data.description)
        # An output with no batch axis (a recurrent model's final state [layers, 1, hidden]) holds no row
        # per sample: metrics read the others; only a model with nothing else cannot be judged.
        batched = [name for name in names if axes[name] is not None]
        if not batched:
            name = names[0]
            fed = batch_layout(model).fixed or min(self.batch_size, len(data))
            raise MetricError(f"output '{name}' has shape {list(outputs[name].shape)} for a batch of {fed}: "
                              f"metrics need one row per sample (an axis as long as the batch)")
        self.unbatched.update(name for name in names if axes[name] is None)
        self.runs += 1
        return {name: np.moveaxis(outputs[name], axes[name], 0) for name in batched}

    def _batches(self, model: Model, data: Dataset, runner) -> bool:
        """Whether some output of `model` grows with the samples fed in one run (two, to find out)."""
        two = {name: array[:2] for name, array in data.inputs.items()}
        _, axes = run_samples(model, two, None, runner, data.description)
        return any(axis is not None for axis in axes.values())

    def _one_by_one(self, model: Model, data: Dataset, runner, names: list[str]) -> dict[str, np.ndarray]:
        """Every output, one run per sample, stacked: for a model that declares a batch axis but whose
        outputs do not grow with it (ddddocr's quantized CRNN gives [3, 1, 8210] for any batch)."""
        rows = [run_samples(model, {k: v[i:i + 1] for k, v in data.inputs.items()}, 1, runner, data.description)[0]
                for i in range(len(data))]
        self.runs += 1
        return {name: np.stack([row[name] for row in rows]) for name in names}

    # -- scoring -----------------------------------------------------------------------

    def scores(self, model: Model, dataset: Dataset, metrics: Sequence[str | Metric],
               reference: Model | None = None, output: str | None = None,
               batches: bool | None = None) -> dict[str, Score]:
        """Several metrics of `model` on `dataset` from one run (and one cached run of `reference`);
        `batches` as `run` takes it, for both models."""
        resolved = [m if isinstance(m, Metric) else get_metric(m) for m in metrics]
        data = validate(dataset, model)
        if reference is not None:
            validate(data, reference)
        for metric in resolved:  # before any model runs: a missing label should not cost a run
            metric.check(data, reference is not None)
        reference_outputs = self.reference_outputs(reference, data, batches) if reference is not None else None
        outputs = self.run(model, data, batches)
        if output is not None and output in self.unbatched:
            raise MetricError(f"output '{output}' has no batch axis (it does not grow with the number of samples): "
                              "metrics need one row per sample; choose another output")
        return {m.name: m(outputs, data, reference_outputs, output) for m in resolved}

    def score(self, model: Model, dataset: Dataset, metric: str | Metric,
              reference: Model | None = None, output: str | None = None, batches: bool | None = None) -> Score:
        """One metric of `model` on `dataset` (against `reference`, for the fidelity metrics)."""
        return next(iter(self.scores(model, dataset, [metric], reference, output, batches).values()))


def _runner(sess: ort.InferenceSession):
    """One batch of feeds -> every output of the session, by name."""
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds)))


# One evaluator behind the functions below, so that calling `evaluate` in a loop
# over variants of one original still runs the original once.
_SHARED = Evaluator()


def evaluate(model: Model, dataset: Dataset, metric: str | Metric = "top1", reference: Model | None = None, *,
             output: str | None = None, evaluator: Evaluator | None = None) -> Score:
    """`metric` of `model` on `dataset`; `reference` is the original model, for the fidelity metrics."""
    return (evaluator or _SHARED).score(model, dataset, metric, reference, output)


@dataclass(frozen=True)
class ModelComparison:
    """Two models on the same data: a task metric for each, and B's fidelity to A."""

    data: str  # the data as printed: its description, sample count and labels
    n: int
    a: Score | None  # the task metric (top1 or a plug-in) of A, when there is one
    b: Score | None
    fidelity: dict[str, Score] = field(default_factory=dict)  # agreement, cosine, sqnr of B against A

    def interval_warnings(self, budget: float | None) -> list[str]:
        """A warning for each score (A's, B's, B's fidelity to A) whose 95% interval is wider than `budget`."""
        return interval_warnings([("A: ", self.a), ("B: ", self.b)]
                                 + [("B against A: ", score) for score in self.fidelity.values()], budget)

    def drop(self) -> tuple[str, float]:
        """(metric, how much worse B is than A in it): the task metric when there is one (A's value minus
        B's, oriented so that positive is worse), else B's agreement with A (100 - agreement, in points),
        else its cosine similarity (1 - cosine). What `compare --fail-over` gates on."""
        if self.a is not None and self.b is not None:
            sign = 1 if self.a.higher_is_better else -1
            return self.a.name, (self.a.value - self.b.value) * sign
        if "agreement" in self.fidelity:
            return "agreement", 100.0 - self.fidelity["agreement"].value
        return "cosine", 1.0 - self.fidelity["cosine"].value

    def to_dict(self, models: tuple[str, str] = ("A", "B"), details: tuple[Mapping, Mapping] = ({}, {}),
                budget: float | None = None) -> dict:
        """JSON-ready: the data; for "a" and "b" the model's name (`models`), task metric and `details` (what
        the caller knows of each model, e.g. its costs); "b_vs_a", B's fidelity to A; and the interval
        warnings for `budget`."""
        sides = {key: {"model": name, "metric": score.to_dict() if score is not None else None, **extra}
                 for key, name, score, extra in zip(("a", "b"), models, (self.a, self.b), details)}
        return {"data": self.data, "n": self.n, **sides,
                "b_vs_a": {name: s.to_dict() for name, s in self.fidelity.items()},
                "warnings": self.interval_warnings(budget)}


def compare(a: Model, b: Model, dataset: Dataset, metric: str | None = None, *, output: str | None = None,
            evaluator: Evaluator | None = None) -> ModelComparison:
    """Score A and B on `dataset` with `metric` (default: top1 when there are labels) and B against A.

    Agreement is reported when the compared output holds class scores; cosine
    and SQNR always. A plug-in metric gets A's outputs as its reference for both.
    """
    evaluator = evaluator or _SHARED
    data = validate(dataset, a)
    validate(data, b)
    if metric in FIDELITY:
        raise MetricError(f"compare always reports {', '.join(FIDELITY)} of B against A; the metric is for a task "
                          f"metric (top1 or a plug-in)")
    if metric is None and data.labels is not None:
        metric = "top1"
    task = get_metric(metric) if metric else None
    if task is not None:
        task.check(data, has_reference=True)
    outputs_a = evaluator.reference_outputs(a, data)
    outputs_b = evaluator.run(b, data)
    fidelity = {}
    for name in FIDELITY:
        if name == "agreement" and not _reads_class_scores(outputs_a, output):
            continue
        fidelity[name] = get_metric(name)(outputs_b, data, outputs_a, output)
    return ModelComparison(
        str(data), len(data),
        task(outputs_a, data, outputs_a, output) if task else None,
        task(outputs_b, data, outputs_a, output) if task else None,
        fidelity,
    )


def _reads_class_scores(outputs: Outputs, output: str | None) -> bool:
    array = outputs[output] if output in outputs else next(iter(outputs.values()))
    return is_class_scores(array)
