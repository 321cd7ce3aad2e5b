"""Where a measured target's cost model is wrong on one model: each kernel's in-model time beside its prediction.

    python bench/costmodel_attribution.py MODEL [--target cpu-ort] [--measurements M.csv] [--top 20]

MODEL is a held-out model of bench/costmodel_fidelity.py (digits, paddle_cls~3,
yolov8n, ...) or an .onnx path. The model runs under onnxruntime's profiler
(the target's session options); each node of the graph onnxruntime ran is
given to one of the cost model's kernels (`predict(model).kernels`):
- by name, or by the tensor a blocked-layout node is named after (onnxruntime
  names a node it moves into NCHWc `<output>_nchwc`, the output of the last
  op it fused), or by a fused node's name (`<node>/QuickGeluFusion/`), or by
  the tensors it writes;
- a layout reorder belongs to the kernel on its plain side (ReorderOutput to
  the kernel that reads it, ReorderInput to the one that wrote it), as a
  reorder between a sweep network's context and its kernel is the kernel's.
Node times are those the sweep reads (`costmodel.profiler`: the faster half of
the runs, less the profiler's own cost per node). Prints the sums per kernel
kind (kind + fused ops), then the kernels the prediction misses most, then
what no kernel took.

This is how issue 13's over-prediction of the PaddleOCR classifier was traced
to depthwise convs costed by the prior alone (see costmodel_fidelity.py).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.costmodel_fidelity import THIRD_PARTY, held_out  # noqa: E402
from onnx_tailor.costmodel import CostModel, cost_model_for, load_target, read_measurements  # noqa: E402
from onnx_tailor.costmodel.measure import PROFILE_WARMUP, measure_profiler_bias, session_options  # noqa: E402
from onnx_tailor.costmodel.profiler import REORDERS, node_durations_us, profiled_run, robust_mean  # noqa: E402
from onnx_tailor.ir import seeded_inputs  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

RUNS = 60
NCHWC_SUFFIX = "_nchwc"


def owners(prediction, model, graph) -> dict[str, str]:
    """Optimized node name -> the name of the kernel it belongs to (see the module docstring)."""
    by_node, by_tensor, readers = {}, {}, defaultdict(list)
    writes = {node.name: node.output for node in model.proto.graph.node}
    for kp in prediction.kernels:
        kernel = kp.row.kernel
        for name in kernel.nodes:
            by_node[name] = kernel.name
            # Inner tensors too: onnxruntime names a conv it fused an activation into after the conv's own
            # output when it did not take the activation's name (HardSigmoid+Mul spelled out).
            for tensor in writes.get(name, ()):
                by_tensor[tensor] = kernel.name
        for tensor in kernel.outputs:
            by_tensor[tensor] = kernel.name
        for tensor in kernel.inputs:
            readers[tensor].append(kernel.name)
    produced = {t for kp in prediction.kernels for t in kp.row.kernel.outputs}
    found = {}
    for node in graph.node:
        name = node.name
        if node.op_type in REORDERS:
            plain = node.output[0] if node.op_type == "ReorderOutput" else node.input[0]
            owner = next(iter(readers.get(plain, ())), None) if node.op_type == "ReorderOutput" else \
                by_tensor.get(plain)
        elif name in by_node:
            owner = by_node[name]
        elif name.endswith(NCHWC_SUFFIX) and name[:-len(NCHWC_SUFFIX)] in by_tensor:
            owner = by_tensor[name[:-len(NCHWC_SUFFIX)]]
        elif name.endswith("Fusion/"):
            owner = by_node.get(name.rstrip("/").rsplit("/", 1)[0])
        else:
            owner = next((by_tensor[t] for t in node.output if t in by_tensor and t in produced), None)
        if owner is not None:
            found[name] = owner
    return found


def attribute(model, cost_model, target):
    """(prediction, {kernel: in-model seconds}, {op_type of a node no kernel took: seconds})."""
    prediction = cost_model.predict(model)
    bias = measure_profiler_bias(target)
    events, graph = profiled_run(model.proto, session_options(target), [target.execution_provider],
                                 seeded_inputs(model), PROFILE_WARMUP + RUNS)
    owner = owners(prediction, model, graph)
    measured, left = defaultdict(float), defaultdict(float)
    for name, (op_type, runs) in node_durations_us(events).items():
        seconds = max(robust_mean(runs[PROFILE_WARMUP:] or runs) * 1e-6 - bias, 0.0)
        if name in owner:
            measured[owner[name]] += seconds
        else:
            left[op_type] += seconds
    return prediction, measured, left


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a held-out model of costmodel_fidelity.py, or an .onnx path")
    parser.add_argument("--target", default="cpu-ort")
    parser.add_argument("--measurements", help="fit the cost model on this CSV instead of the target's own")
    parser.add_argument("--top", type=int, default=20, help="how many kernels to list")
    args = parser.parse_args()
    target = load_target(args.target)
    if args.model.endswith(".onnx"):
        model = load(args.model)
    else:
        models = dict(held_out(6, 320, list(THIRD_PARTY)))
        if args.model not in models:
            parser.error(f"{args.model}: not a held-out model ({', '.join(models)})")
        model = models[args.model]
    cost_model = (CostModel.fit(target, read_measurements(Path(args.measurements))) if args.measurements
                  else cost_model_for(target))
    prediction, measured, left = attribute(model, cost_model, target)
    kinds = defaultdict(lambda: [0, 0.0, 0.0])
    for kp in prediction.kernels:
        kernel = kp.row.kernel
        row = kinds[kernel.kind + ("+" + ",".join(kernel.fused) if kernel.fused else "")]
        row[0] += 1
        row[1] += kp.latency_s
        row[2] += measured.get(kernel.name, 0.0)
    print(f"{args.model} on {target.name}: predicted {prediction.latency_s * 1e6:.1f} us "
          f"(overhead {prediction.overhead_s * 1e6:.1f}), profiled nodes {sum(measured.values()) * 1e6:.1f} us "
          f"in kernels + {sum(left.values()) * 1e6:.1f} us in none")
    print(f"\n{'kind':<36} {'kernels':>7} {'predicted us':>13} {'in model us':>12} {'error us':>10}")
    for kind, (count, predicted, actual) in sorted(kinds.items(), key=lambda item: -abs(item[1][1] - item[1][2])):
        print(f"{kind:<36} {count:>7} {predicted * 1e6:>13.1f} {actual * 1e6:>12.1f} {(predicted - actual) * 1e6:>+10.1f}")
    print(f"\n{'kernel':<44} {'kind':<12} {'predicted us':>13} {'in model us':>12}")
    worst = sorted(prediction.kernels, key=lambda kp: -abs(kp.latency_s - measured.get(kp.row.kernel.name, 0.0)))
    for kp in worst[:args.top]:
        print(f"{kp.row.kernel.name[:43]:<44} {kp.row.kind:<12} {kp.latency_s * 1e6:>13.1f} "
              f"{measured.get(kp.row.kernel.name, 0.0) * 1e6:>12.1f}")
    if left:
        print("\nno kernel's: " + ", ".join(f"{op} {s * 1e6:.1f} us" for op, s in sorted(left.items(), key=lambda i: -i[1])))


if __name__ == "__main__":
    main()
