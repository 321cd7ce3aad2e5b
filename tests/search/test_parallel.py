"""Candidates previewed, applied and evaluated in parallel: a local process pool and Ray give the bytes one
process gives.

Each strategy runs a short search on the tiny synthetic MobileNet with one
worker and with two (and on a local Ray instance when Ray is installed): the
best model, its steps, every model evaluated and the log of every
candidate's fate (with its predicted gain) must be the same; and
`optimize --workers 2` writes the model and recipe bytes that `--workers 1`
writes. The previews a worker computes (from a model, its kernel costs and
the cost model sent across) are the ones this process computes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
from click.testing import CliRunner

from onnx_tailor import accuracy
from onnx_tailor.cli import main
from onnx_tailor.costmodel import load_target
from onnx_tailor.errors import TailorError
from onnx_tailor.ir import Model, save
from onnx_tailor.search import context, executor, optimize
from onnx_tailor.search.beam import beam
from onnx_tailor.search.constraints import Constraints, parse_max_drop
from onnx_tailor.search.context import SearchContext, SearchData
from onnx_tailor.search.evolutionary import evolutionary
from onnx_tailor.search.greedy import greedy
from tests.search.tiny_search import PASSES

OPTIONS = dict(target="npu-p32", data="random", metric="cosine", max_drop="0.05", passes=PASSES)


def _fingerprint(ctx: SearchContext) -> tuple:
    log = json.dumps(ctx.log, sort_keys=True, default=str).encode()
    return (ctx.best.key, ctx.best.steps, hashlib.sha256(log).hexdigest(), ctx.stats.applied, ctx.stats.evaluated,
            [node.key for node in ctx.evaluated])


def _search(model: Model, strategy: str, **execution) -> SearchContext:
    """A short search of `strategy` on `model`, run where `execution` says."""
    passes = OPTIONS["passes"]
    data = _data(model)
    ctx = SearchContext(model, load_target("npu-p32"), passes, Constraints(parse_max_drop("0.05"), None, None),
                        data, **execution)
    try:
        if strategy == "greedy":
            greedy(ctx, evaluations_per_step=4)
        elif strategy == "beam":
            beam(ctx, width=2, expansions_per_node=3)
        else:
            evolutionary(ctx, population_size=4, generations=3, seed=3)
    finally:
        ctx.close()
    return ctx


def _data(model: Model) -> SearchData:
    dataset = accuracy.load_data("random", model)
    split = accuracy.split_three(dataset, accuracy.DEFAULT_SPLIT, 0)
    data = SearchData(split.calibration.inputs, split.selection, split.test, "cosine", accuracy.Evaluator(), None,
                      0.05, split.calibration.fingerprint, "fp32")
    data.original_score = data.score(model, split.selection, model)
    return data


@pytest.fixture(scope="module")
def serial(tiny):
    return {strategy: _fingerprint(_search(tiny, strategy)) for strategy in ("greedy", "beam", "evolutionary")}


@pytest.mark.parametrize("strategy", ["greedy", "beam", "evolutionary"])
def test_two_workers_find_and_log_what_one_does(tiny, serial, strategy):
    assert len(serial[strategy][1]) > 0  # the search took steps: there was something to get wrong
    assert _fingerprint(_search(tiny, strategy, workers=2)) == serial[strategy]


def test_the_command_line_with_two_workers_writes_the_bytes_of_one(tiny, tmp_path):
    path = tmp_path / "tiny.onnx"
    save(tiny, path)
    written = {}
    for workers in ("1", "2"):
        output = tmp_path / f"out{workers}.onnx"
        result = CliRunner().invoke(main, ["optimize", str(path), "--target", "npu-p32", "--data", "random",
                                           "--metric", "cosine", "--max-drop", "0.05", "--passes",
                                           ",".join(OPTIONS["passes"]), "--search", "beam", "--beam-width", "2",
                                           "--workers", workers, "--quiet", "-o", str(output),
                                           "--recipe", str(tmp_path / f"recipe{workers}.json")])
        assert result.exit_code == 0, result.output
        written[workers] = (output.read_bytes(), (tmp_path / f"recipe{workers}.json").read_bytes())
    assert written["1"] == written["2"]


def _context(model: Model, **execution) -> SearchContext:
    return SearchContext(model, load_target("npu-p32"), OPTIONS["passes"],
                         Constraints(parse_max_drop("0.05"), None, None), _data(model), **execution)


def test_previews_from_workers_are_the_ones_made_here(tiny):
    """Before `close` the workers preview (the sites dealt among them); after it this process does, and the
    ceiling walk, which previews along its way, finds the same either way."""
    here, pooled = _context(tiny), _context(tiny, workers=2)
    try:
        there = pooled.candidates(pooled.root)
    finally:
        pooled.close()
    mine = here.candidates(here.root)
    assert {c.step.pass_name for c in mine} >= {"fuse_ibn_expansion", "pad_channels"}  # lossy and exact
    assert [(c.step, c.predicted_s) for c in there] == [(c.step, c.predicted_s) for c in mine]
    walked = pooled.ceiling(pooled.root)[0]
    assert len(walked.steps) > 1 and walked.steps == here.ceiling(here.root)[0].steps


def test_a_frontier_previewed_in_one_batch_gets_what_each_node_gets_alone(tiny):
    """A beam's frontier has its previews built together on the workers (`candidates_of`); a node whose parent
    is in the same batch still takes the previews that carry over from it, as one node at a time would."""
    here, pooled = _context(tiny), _context(tiny, workers=2)
    try:
        children = [here.expand(here.root, c) for c in here.candidates(here.root)[:3]]
        children = [child for child in children if child is not None]
        assert len(children) >= 2
        for child in children:  # the same children in the pooled search, its root not previewed yet
            pooled._parents[child.key] = pooled.root
            pooled._costs[child.key] = here._costs[child.key]
        batch = pooled.candidates_of([*children, pooled.root])  # the parent last: it must go first anyway
    finally:
        pooled.close()
    alone = [here.candidates(child) for child in children] + [here.candidates(here.root)]
    assert [[(c.step, c.predicted_s) for c in found] for found in batch] == \
        [[(c.step, c.predicted_s) for c in found] for found in alone]
    assert pooled.stats.reused == here.stats.reused > 0  # carried over from the root in both
    assert pooled.stats.previewed == here.stats.previewed


def test_a_model_sent_to_another_process_brings_its_content_hash_when_known(tiny):
    """Deriving the hash serializes the whole proto: a worker's model arrives with it, and it is the one the
    receiver would compute."""
    fresh = pickle.loads(pickle.dumps(Model(tiny.proto)))
    assert "content_hash" not in fresh.__dict__  # nothing computed, nothing sent
    sent = pickle.loads(pickle.dumps(fresh.with_proto(tiny.proto)))
    assert "content_hash" not in sent.__dict__
    hashed = Model(tiny.proto)
    expected = hashed.content_hash
    arrived = pickle.loads(pickle.dumps(hashed))
    assert arrived.__dict__["content_hash"] == expected == Model(arrived.proto).content_hash


def test_the_command_line_asks_for_a_worker_per_core_by_default(tiny, tmp_path, monkeypatch):
    """Without --workers the search gets None, which is one worker per core this process may use."""
    asked = []

    def one_process(shared, workers, ray, local):  # what was asked for; the search itself runs here
        asked.append(workers)
        return executor.Serial(local)

    monkeypatch.setattr(context, "executor_for", one_process)
    save(tiny, tmp_path / "tiny.onnx")
    result = CliRunner().invoke(main, ["optimize", str(tmp_path / "tiny.onnx"), "--target", "npu-p32", "--passes",
                                       "pad_channels", "--quiet", "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, result.output
    assert asked == [None]
    monkeypatch.setattr(executor, "default_workers", lambda: 3)
    pool = executor.executor_for(_context(tiny)._evaluation.shared, None, None, None)  # no worker starts yet
    try:
        assert pool.width == 3
    finally:
        pool.close()


def test_zero_workers_is_refused(tiny):
    with pytest.raises(TailorError, match="--workers must be at least 1"):
        optimize(tiny, workers=0, **OPTIONS)


def test_ray_finds_and_logs_what_one_process_does(tiny, serial):
    ray = pytest.importorskip("ray", reason="Ray is not installed (the optional 'ray' extra)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = _search(tiny, "beam", ray="auto")
    finally:
        ray.shutdown()
    assert _fingerprint(on_ray) == serial["beam"]


def test_work_ahead_prefers_candidates_the_next_step_leaves_alone(tiny):
    """Computed beside the next candidate: first those whose fit taking it would leave as it is (upstream of
    it), which the memo then serves on the child; one downstream of it only when nothing else is planned."""
    ctx = _context(tiny, workers=2)
    try:
        order = [n.name for n in tiny.nodes]
        fusions = sorted((c for c in ctx.candidates(ctx.root) if c.step.pass_name == "fuse_ibn_expansion"),
                         key=lambda c: order.index(c.site.anchor))
        assert len(fusions) >= 3
        before, first, after = fusions[0], fusions[1], fusions[-1]
        assert ctx.ahead(ctx.root, [first, after, before]) == [first, before]
        assert ctx.ahead(ctx.root, [first, before, after]) == [first, before]
        assert ctx.ahead(ctx.root, [first, after]) == [first, after]
        assert ctx.ahead(ctx.root, []) == []
        shared_fits = ctx._memo_dir
        assert shared_fits is not None and os.path.isdir(shared_fits)
    finally:
        ctx.close()
    assert not os.path.exists(shared_fits)  # the workers' shared fits go with them
    alone = _context(tiny)
    assert alone.ahead(alone.root, [first, before]) == [first]  # one process: nothing computed ahead
