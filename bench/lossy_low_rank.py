"""What factor_low_rank saves, and what it costs in accuracy.

    python bench/lossy_low_rank.py [--energies 0.9,0.95,0.99] [--methods svd,whitened]
                                   [--part all|digits|embedding] [--ranks 2,5,10,20,30,50]

Part 1, the digits demo model (models/digits_mbv2.onnx, its 360 held-out
digits split 50/50 into calibration and evaluation with seed 0): every site
alone at each energy, then every site at once. Passes fit on (and local
errors are measured on) the calibration half; top-1 and agreement with the
original are measured on the evaluation half only.

Part 2, embedding tables: no model here has one, so this builds bag-of-
embeddings text classifiers (ids -> Gather(E) -> mean over the document ->
Gemm -> logits) on a synthetic 20-topic text task (5,000 words, Zipfian
frequencies, 32-token documents), trained with numpy: embeddings trained
from scratch (D = 100 and D = 300) and frozen PPMI-SVD embeddings (a
GloVe-like stand-in, D = 100). Each table is factored at several ranks and
judged on held-out documents: the reference text claims ~90% fewer
embedding parameters at under 1% accuracy loss.

Prints tables only; no assertions. Seeded and deterministic; about 9 minutes
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper
from scipy.sparse.linalg import svds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_tailor import accuracy  # noqa: E402
from onnx_tailor.analysis import analyze  # noqa: E402
from onnx_tailor.ir import Model  # noqa: E402
from onnx_tailor.passes import apply_pass, get_pass  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FACTOR = get_pass("factor_low_rank")


def short(anchor: str) -> str:
    return anchor.replace("/blocks/blocks.", "b").replace("/body/body.", ".").replace("/Conv", "").strip("/")


def judge(evaluator, model, original, evaluation) -> tuple[accuracy.Score, accuracy.Score]:
    scores = evaluator.scores(model, evaluation, ["top1", "agreement"], reference=original)
    return scores["top1"], scores["agreement"]


# -- part 1: the digits demo model -----------------------------------------------------------


def digits_tables(energies: list[float], all_energies: list[float], methods: list[str]) -> None:
    model = load(REPO / "models" / "digits_mbv2.onnx")
    split = accuracy.split_dataset(accuracy.load_npz(REPO / "models" / "digits_eval.npz"), calibration=0.5, seed=0)
    calib, evaluation = split.calibration.inputs, split.evaluation
    evaluator = accuracy.Evaluator()
    base_top1, _ = judge(evaluator, model, model, evaluation)
    base = analyze(model)
    print(f"## digits_mbv2: every site alone (fit on {len(split.calibration)} calibration digits, "
          f"judged on {len(evaluation)} evaluation digits)")
    print(f"original: {base_top1}; {base.params} parameters, {base.macs / 1e6:.2f} M MACs")
    print("local error: relative L2 change of the site's output on the calibration digits; "
          "dtop1: points vs the original on the evaluation digits (95% CI of one top-1 here is about "
          f"+-{base_top1.half_width:.1f} points); agree: top-1 agreement with the original, %.\n")

    header = f"{'site':<16} {'K x N':^11}{'energy':>6} {'rank':>4} {'weight params':^16} {'fewer':>6}"
    for method in methods:
        header += f" | {method + ' local err':>18} {'dtop1':>6} {'agree':>6}"
    header += " | declined at (rank: no saving)"
    print(header)
    print("-" * len(header))
    found = {e: {s.anchor: s for s in FACTOR.find(model, energy=e)} for e in energies}
    declined = {e: {d.anchor: d.reason for d in FACTOR.declined(model, energy=e)} for e in energies}
    never = []
    for anchor in dict.fromkeys(a for e in energies for a in list(found[e]) + list(declined[e])):
        applies = [e for e in energies if anchor in found[e]]
        if not applies:
            never.append((anchor, declined[min(energies)][anchor]))
            continue
        k, n = _shape(model, anchor)
        no_gain = ", ".join(f"{e:g} ({declined[e][anchor].split()[1]})" for e in energies if anchor in declined[e])
        for i, energy in enumerate(applies):
            site = found[energy][anchor]
            before, after = (int(x) for x in site.summary.split("parameters ")[1].split(" (")[0].split(" -> "))
            row = (f"{short(anchor):<16} {k:>4} x {n:<4}{energy:>6.2f} {site.param_dict['rank']:>4} "
                   f"{before:>6} -> {after:<6} {1 - after / before:>6.1%}")
            for method in methods:
                result = apply_pass(model, "factor_low_rank", anchor, {"energy": energy, "method": method},
                                    calib=calib)
                top1, agree = judge(evaluator, result.model, model, evaluation)
                row += f" | {result.local_errors[0]:>18.4f} {top1.value - base_top1.value:>+6.2f} {agree.value:>6.2f}"
            print(row + (f" | {no_gain}" if i == 0 and no_gain else ""))
    print("\nnever a site at these energies:")
    for anchor, reason in never:
        print(f"  {short(anchor):<16} {reason}")

    print("\n## digits_mbv2: every site at once (the driver's find-apply-find loop; whitened fits each site "
          "on the activations of the already factored model)\n")
    header = f"{'method':<9} {'energy':>6} {'sites':>5} {'params':>16} {'M MACs':>13} {'top1 (95% CI)':>27} {'agree':>7}"
    print(header)
    print("-" * len(header))
    for method in methods:
        for energy in all_energies:
            result = apply_pass(model, "factor_low_rank", params={"energy": energy, "method": method}, calib=calib)
            after = analyze(result.model)
            top1, agree = judge(evaluator, result.model, model, evaluation)
            print(f"{method:<9} {energy:>6.2f} {len(result.sites):>5} {base.params:>7} -> {after.params:<6} "
                  f"{base.macs / 1e6:>5.2f} -> {after.macs / 1e6:<5.2f} {top1.shown:>8} {top1.interval:>18} "
                  f"{agree.value:>6.2f}%")


def _shape(model: Model, anchor: str) -> tuple[int, int]:
    node = model.node(anchor)
    w = model.constant(node.input[1])
    if node.op_type == "Conv":
        return w.shape[1], w.shape[0]
    if node.op_type == "Gemm" and model.attr(node, "transB", 0):
        return w.shape[1], w.shape[0]
    return w.shape


# -- part 2: embedding tables ----------------------------------------------------------------

VOCAB, CLASSES, LENGTH, CLUSTERS = 5000, 20, 32, 150


class TextTask:
    """Documents drawn from a topic model: each class is a sparse mixture of word clusters.

    A document of class c takes each token from a background Zipf distribution
    (30%), from topic c (50% of the rest), or from other topics (a Dirichlet
    mixture), so the task is not separable word by word (~90% top-1).
    """

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        zipf = 1.0 / (np.arange(VOCAB) + 10.0)
        cluster = rng.integers(0, CLUSTERS, VOCAB)
        weights = rng.dirichlet(np.full(CLUSTERS, 0.05), size=CLASSES)[:, cluster] * zipf
        table = np.vstack([weights / weights.sum(1, keepdims=True), zipf / zipf.sum()])
        self.cdf = np.cumsum(table, 1)

    def documents(self, n: int, seed: int, own: float = 0.5, background: float = 0.3):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, CLASSES, n)
        theta = rng.dirichlet(np.full(CLASSES, 0.3), size=n) * (1 - own)
        theta[np.arange(n), labels] += own
        mix = np.concatenate([theta * (1 - background), np.full((n, 1), background)], 1)
        topic = np.minimum((np.cumsum(mix, 1)[:, None, :] < rng.random((n, LENGTH, 1))).sum(-1), CLASSES)
        uniform, ids = rng.random((n, LENGTH)), np.empty((n, LENGTH), np.int64)
        for t in range(CLASSES + 1):
            chosen = topic == t
            ids[chosen] = np.searchsorted(self.cdf[t], uniform[chosen] * self.cdf[t, -1])
        return np.minimum(ids, VOCAB - 1), labels


def bag(ids: np.ndarray) -> sp.csr_matrix:
    """[docs, V]: how often each word occurs in each document, over the document length."""
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    return sp.csr_matrix((np.full(ids.size, 1.0 / ids.shape[1]), (rows, ids.ravel())), shape=(len(ids), VOCAB))


def train(table: np.ndarray, ids, labels, epochs: int, lr: float, train_table: bool, seed: int = 0):
    """Adam on softmax cross-entropy of mean(E[ids]) @ W^T + b."""
    rng = np.random.default_rng(seed)
    counts = bag(ids)
    params = [table.copy(), rng.standard_normal((CLASSES, table.shape[1])) * 0.01, np.zeros(CLASSES)]
    first, second = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(ids))
        for start in range(0, len(order), 128):
            batch = order[start:start + 128]
            rows = counts[batch]
            pooled = rows @ params[0]
            logits = pooled @ params[1].T + params[2]
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            prob[np.arange(len(batch)), labels[batch]] -= 1
            grad = prob / len(batch)
            grads = [rows.T @ (grad @ params[1]), grad.T @ pooled, grad.sum(0)]
            step += 1
            for i in range(0 if train_table else 1, 3):
                first[i] = 0.9 * first[i] + 0.1 * grads[i]
                second[i] = 0.999 * second[i] + 0.001 * grads[i] ** 2
                params[i] -= lr * (first[i] / (1 - 0.9 ** step)) / (np.sqrt(second[i] / (1 - 0.999 ** step)) + 1e-8)
    return params


def ppmi_embeddings(task: TextTask, dim: int, docs: int = 30000) -> np.ndarray:
    """GloVe-like pretrained vectors: truncated SVD of the positive PMI of document co-occurrence."""
    ids, _ = task.documents(docs, seed=3)
    present = (bag(ids) > 0).astype(np.float64)
    cooc = (present.T @ present).toarray()
    np.fill_diagonal(cooc, 0)
    total, marginal = cooc.sum(), cooc.sum(1) / cooc.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(cooc / total) - np.log(marginal[:, None]) - np.log(marginal[None, :])
    ppmi = np.nan_to_num(np.maximum(pmi, 0), nan=0.0, posinf=0.0, neginf=0.0)
    u, s, _ = svds(sp.csr_matrix(ppmi), k=dim, random_state=0)
    order = np.argsort(s)[::-1]
    vectors = u[:, order] * np.sqrt(s[order])
    return vectors / np.linalg.norm(vectors, axis=1).mean()


def classifier_model(table: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> Model:
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["vectors"], name="embed"),
             helper.make_node("ReduceMean", ["vectors"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("Gemm", ["pooled", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in
             (("embedding", table), ("fc.weight", weight), ("fc.bias", bias))]
    graph = helper.make_graph(nodes, "bag_of_embeddings",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", LENGTH])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return Model(onnx.shape_inference.infer_shapes(proto))


def embedding_tables(ranks: list[int], methods: list[str]) -> None:
    task = TextTask(seed=0)
    train_ids, train_labels = task.documents(12000, seed=1)
    test_ids, test_labels = task.documents(4000, seed=2)
    split = accuracy.split_dataset(accuracy.Dataset({"ids": test_ids}, test_labels, "synthetic topics"),
                                   calibration=0.5, seed=0)
    evaluator = accuracy.Evaluator()
    started = time.perf_counter()
    variants = []
    for dim in (100, 300):
        rng = np.random.default_rng(dim)
        table, weight, bias = train(rng.standard_normal((VOCAB, dim)) * 0.1, train_ids, train_labels,
                                    epochs=4, lr=3e-3, train_table=True)
        variants.append((f"trained from scratch, D={dim}", classifier_model(table, weight, bias)))
    pretrained = ppmi_embeddings(task, 100)
    table, weight, bias = train(pretrained, train_ids, train_labels, epochs=20, lr=1e-2, train_table=False)
    variants.append(("frozen PPMI-SVD (GloVe-like), D=100", classifier_model(table, weight, bias)))
    print(f"\n## embedding tables: bag-of-embeddings classifiers on a synthetic {CLASSES}-topic text task "
          f"({VOCAB} words, {len(train_ids)} training documents; trained in {time.perf_counter() - started:.0f} s)")
    print(f"factored with factor_low_rank at each rank; fit on {len(split.calibration)} calibration documents "
          f"(whitened: id frequencies), judged on {len(split.evaluation)} evaluation documents\n")

    for name, model in variants:
        top1, _ = judge(evaluator, model, model, split.evaluation)
        dim = model.constant("embedding").shape[1]
        table_params = VOCAB * dim
        print(f"### {name}: {top1}; embedding {VOCAB} x {dim} = {table_params} parameters")
        header = f"{'rank':>4} {'energy':>7} {'emb params':>10} {'fewer':>6}"
        for method in methods:
            header += f" | {method + ' local err':>18} {'top1':>7} {'dtop1':>6} {'agree':>6}"
        print(header)
        print("-" * len(header))
        for rank in [r for r in ranks if r < dim]:
            sites = FACTOR.find(model, rank=rank)
            if not sites:
                print(f"{rank:>4}  declined: {FACTOR.declined(model, rank=rank)[0].reason}")
                continue
            site = sites[0]
            kept = float(site.summary.split("(")[1].split("%")[0]) / 100
            after = rank * (VOCAB + dim)
            row = f"{rank:>4} {kept:>7.2%} {after:>10} {1 - after / table_params:>6.1%}"
            for method in methods:
                result = apply_pass(model, "factor_low_rank", "embed", {"rank": rank, "method": method},
                                    calib=split.calibration.inputs)
                score, agree = judge(evaluator, result.model, model, split.evaluation)
                row += (f" | {result.local_errors[0]:>18.4f} {score.value:>6.2f}% {score.value - top1.value:>+6.2f}"
                        f" {agree.value:>6.2f}")
            print(row)
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--energies", default="0.9,0.95,0.99", help="digits, each site alone")
    parser.add_argument("--all-energies", default="0.5,0.7,0.8,0.9,0.95,0.99", help="digits, every site at once")
    parser.add_argument("--methods", default="svd,whitened")
    parser.add_argument("--ranks", default="2,5,10,20,30,50")
    parser.add_argument("--part", choices=("all", "digits", "embedding"), default="all")
    args = parser.parse_args()
    methods = args.methods.split(",")
    started = time.perf_counter()
    if args.part in ("all", "digits"):
        digits_tables([float(e) for e in args.energies.split(",")],
                      [float(e) for e in args.all_energies.split(",")], methods)
    if args.part in ("all", "embedding"):
        embedding_tables([int(r) for r in args.ranks.split(",")], methods)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
