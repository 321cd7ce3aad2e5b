"""Where candidates are previewed, applied and measured: this process, a local process pool, or Ray.

Applying a candidate (fitting it on the calibration split) and measuring the
result (memory, the metric on the selection split) depends only on the
parent model, the site and what every evaluation shares (the original, the
target, the constraints, the data). So does previewing a candidate (its
cheap rewrite scored by the cost model against the parent's kernel costs),
which would otherwise leave the workers idle while the search runs alone.
That is the work the search hands out. The search keeps everything else:
which candidates to try, in which order, and what the results mean; it
registers results in the order a one-process search would have produced
them, so a search's choices, and its output bytes, do not depend on where
the work ran.

- `Serial`: here, one at a time (`--workers 1`).
- `Pool`: a `concurrent.futures.ProcessPoolExecutor`; each worker receives
  the shared part once (its initializer), the search's fitted cost model
  included, and keeps its own tensor cache (the default budget split among
  them). `submit` hands out work and returns at once, so the search
  registers the first results while the workers compute the rest; a
  worker also scores each model it makes whole (`Measured.costs`), which
  the search would otherwise do alone. The workers share the fits they make
  through a directory (`Shared.memo_dir`, `passes.fit_memo`): a fit one
  computed ahead serves whichever is asked for it later.
- `RayPool`: Ray actors, each holding the shared part and its own cache,
  each job sent to the actor with the fewest unfinished ones and handed
  back as a future of its own (`pip install "onnx-tailor[ray]"`).

Every evaluation runs onnxruntime unoptimized on one thread, and numpy's
BLAS on one thread (fits, norms, metrics), wherever it runs: a worker's
result is the same bytes as the main process's, whatever the machine's
cores, and N workers on N cores use N threads, not N times the BLAS default
spinning against each other.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from ..analysis import memory_summary
from ..costmodel.delta import KernelCosts, kernel_costs
from ..costmodel.regressor import CostModel
from ..costmodel.target import Target
from ..errors import TailorError
from ..ir import Model
from ..passes import Site, apply_step
from ..passes.fit_memo import FitMemo
from ..passes.fit_memo import using as using_memo
from ..passes.least_squares import single_threaded_blas
from ..passes.tensor_cache import TensorCache, default_budget, install, using
from .preview import Preview, previews


@dataclass(frozen=True)
class Shared:
    """What every evaluation of a search needs; sent to each worker once."""

    original: Model
    target: Target
    constraints: Any  # search.constraints.Constraints
    data: Any  # search.context.SearchData, or None
    max_local_error: float
    cache_bytes: int | None  # the tensor cache's budget per process; 0: no cache
    cost_model: CostModel  # the target's, for previews
    memo_dir: str | None = None  # where the workers share fitted weights (`passes.fit_memo`); None: each its own


@dataclass(frozen=True)
class Measured:
    """A model's measurements: what the search's node records about it (its predicted latency the search
    scores itself, kernel by kernel, for the incremental previews)."""

    param_bytes: int
    activation_bytes: int
    judgement: Any = None  # search.context.Judgement on the selection split, when there is data
    memory_violation: str | None = None
    costs: KernelCosts | None = None  # the whole model scored, by whoever applied it (None: not yet)


@dataclass(frozen=True)
class Outcome:
    """One candidate applied: the new model and its measurements, or (model None) a local error over the cap."""

    model: Model | None
    local_error: float | None
    measured: Measured | None


class Evaluation:
    """Applies and measures candidates in one process, with that process's tensor cache."""

    # Whether a model applied here is also scored whole (its kernel costs): the search does that itself for
    # each model new to it, so only a worker, whose time is not the search's own, does it beforehand.
    scores_whole = False

    def __init__(self, shared: Shared, cache: TensorCache | None):
        self.shared = shared
        self.cache = cache
        self.memo = FitMemo(shared.memo_dir)  # a fit asked for again, by any worker, is not computed again

    def measure(self, model: Model, judged: bool) -> Measured:
        memory = memory_summary(model)
        shared = self.shared
        # One BLAS thread: a metric's dot products split their sums by thread, so their last bits
        # would depend on the process's thread count (see the module docstring).
        with single_threaded_blas():
            judgement = shared.data.judge(model, shared.original) if judged and shared.data is not None else None
        return Measured(memory.param_bytes, memory.peak_activation_bytes, judgement,
                        shared.constraints.memory_violation(memory.param_bytes, memory.peak_activation_bytes))

    def __call__(self, job: tuple[Model, Site]) -> Outcome:
        parent, site = job
        calib = self.shared.data.calibration if self.shared.data is not None else None
        # One BLAS thread for a local error's norm too, like a metric (see measure).
        with using(self.cache), using_memo(self.memo), single_threaded_blas():
            applied = apply_step(parent, site, calib, reference=self.shared.original)
            error = applied.local_error
            if error is not None and error > self.shared.max_local_error:
                return Outcome(None, error, None)
            measured = self.measure(applied.model, judged=True)
        if self.scores_whole:
            measured = replace(measured, costs=kernel_costs(self.shared.cost_model, applied.model))
        return Outcome(applied.model, error, measured)

    def evaluate(self, job: tuple[Model, Site]) -> Outcome:
        """The same as calling it: the name the executors call it by."""
        return self(job)

    def preview(self, job: tuple[Model, KernelCosts, list[Site], dict]) -> tuple[list[Preview], int]:
        """The previews of these sites of a model whose kernel costs are given (and how many the whole
        model answered: `search.preview.previews`)."""
        model, costs, sites, params = job
        return previews(self.shared.cost_model, model, costs, sites, params)


def new_cache(budget_bytes: int | None) -> TensorCache | None:
    """A tensor cache with this budget (None: the default); 0 means none."""
    return None if budget_bytes == 0 else TensorCache(budget_bytes)


Work = str  # the name of an Evaluation method: "evaluate" (a job (model, site) -> Outcome) or "preview"


class Executor(Protocol):
    width: int  # how many evaluations run at once

    def map(self, jobs: list, work: Work = "evaluate") -> list: ...

    def submit(self, jobs: list, work: Work = "evaluate") -> list[Future]:
        """Start these jobs and return at once: a future of each one's result, in order."""

    def close(self) -> None: ...


class Serial:
    """Evaluations in this process, one after another."""

    width = 1

    def __init__(self, evaluation: Evaluation):
        self.evaluation = evaluation

    def map(self, jobs, work="evaluate"):
        return [getattr(self.evaluation, work)(job) for job in jobs]

    def submit(self, jobs, work="evaluate"):
        return [done(result) for result in self.map(jobs, work)]

    def close(self) -> None:
        pass


class WorkerEvaluation(Evaluation):
    """The evaluation of a worker process: its own tensor cache, active for the process's whole life."""

    KEPT_MODELS = 8  # parents kept by content: a beam's frontier, with room
    scores_whole = True

    def __init__(self, shared: Shared):
        super().__init__(shared, new_cache(shared.cache_bytes))
        install(self.cache)
        # Every evaluation limits BLAS to one thread anyway; limiting the whole process also keeps
        # OpenBLAS from starting a thread per core that would spin beside the other workers.
        threadpool_limits(1, user_api="blas")
        self._models: OrderedDict[str, Model] = OrderedDict()

    def _known(self, model: Model) -> Model:
        """The copy of `model` this worker met first. Each job brings its parent anew, without the facts
        derived from it (shapes, the tensor cache's cone digests: more than the job's own work on a small
        model); the copy met before has them, as the one model object of a one-process search has."""
        known = self._models.setdefault(model.content_hash, model)
        self._models.move_to_end(model.content_hash)
        while len(self._models) > self.KEPT_MODELS:
            self._models.popitem(last=False)
        return known

    def evaluate(self, job: tuple[Model, Site]) -> Outcome:
        parent, site = job
        outcome = self((self._known(parent), site))
        if outcome.model is not None:  # it travels with the model (`Model.__reduce__`): hashed on a worker's time
            outcome.model.content_hash
        return outcome

    def preview(self, job: tuple[Model, KernelCosts, list[Site], dict]) -> tuple[list[Preview], int]:
        model, costs, sites, params = job
        return super().preview((self._known(model), costs, sites, params))


def done(result) -> Future:
    """A future that already holds `result`."""
    future: Future = Future()
    future.set_result(result)
    return future


_worker: Evaluation | None = None  # a pool worker's own evaluation state, set once by its initializer


def _start_worker(shared: Shared) -> None:
    global _worker
    _worker = WorkerEvaluation(shared)


def _in_worker(work: Work, job):
    return getattr(_worker, work)(job)


class Pool:
    """Evaluations in `workers` local processes (concurrent.futures)."""

    def __init__(self, shared: Shared, workers: int):
        self.width = workers
        # spawn, not fork: a forked copy of a process that has started BLAS or onnxruntime threads can hang.
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(shared,))

    def map(self, jobs, work="evaluate"):
        return [future.result() for future in self.submit(jobs, work)]

    def submit(self, jobs, work="evaluate"):
        return [self._pool.submit(_in_worker, work, job) for job in jobs]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayPool:
    """Evaluations on a Ray cluster: one actor per CPU it offers (or `workers`), each with the shared part."""

    def __init__(self, shared: Shared, address: str, workers: int | None):
        try:
            import ray  # the optional 'ray' extra
        except ImportError:
            raise TailorError('--ray needs Ray: pip install "onnx-tailor[ray]"') from None
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False)
            except Exception as exc:  # Ray's own errors: no cluster at that address, etc.
                raise TailorError(f"cannot connect to Ray at '{address}': {str(exc).splitlines()[0][:200]}") from None
        self.width = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1)(WorkerEvaluation)
        self._actors = [remote.remote(shared) for _ in range(self.width)]
        self._queued: list[list[Future]] = [[] for _ in self._actors]  # each actor's futures, oldest first
        self._ray = ray

    def map(self, jobs, work="evaluate"):
        return [future.result() for future in self.submit(jobs, work)]

    def submit(self, jobs, work="evaluate"):
        """Each job to the actor with the fewest unfinished ones (an actor runs its calls in turn), as a
        future that completes when that job does, not when the batch does."""
        futures = []
        for job in jobs:
            for queue in self._queued:
                queue[:] = [future for future in queue if not future.done()]
            index = min(range(len(self._actors)), key=lambda i: len(self._queued[i]))
            future = getattr(self._actors[index], work).remote(job).future()
            self._queued[index].append(future)
            futures.append(future)
        return futures

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)


def default_workers() -> int:
    """The machine's cores (those this process may use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def executor_for(shared: Shared, workers: int | None, ray: str | None, local: Evaluation) -> Executor:
    """`local` (this process's evaluation) for one worker, a local pool for more (None: the machine's cores),
    Ray when `ray` names a cluster ('auto' or an address)."""
    if ray:
        return RayPool(shared, ray, workers)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise TailorError(f"--workers must be at least 1, not {workers}")
    if workers == 1:
        return Serial(local)
    if shared.cache_bytes is None:  # the default budget is the machine's, not each process's
        shared = replace(shared, cache_bytes=default_budget() // workers)
    return Pool(shared, workers)
