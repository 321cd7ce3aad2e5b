"""The simulated NPU: the ground truth of the `npu-p*` targets, as npu-target.md defines it.

Implemented as written there; the choices it leaves open are these:
- Kernels are what `costmodel.kernels` groups (the page's fusion rule). A
  fused kernel's intermediate tensors never exist: no cycles, no traffic.
- Element-wise ops count elements on their largest input; pooling and
  normalizations on their input; "anything else" on its output.
- Ops that are "memory only" (Transpose, Concat, Slice, Pad, Resize, Split,
  and Gather on a constant table) spend `bytes written / bandwidth` cycles
  moving their data: each byte they produce moves once. A Gather reads only
  the rows it gathers, not its whole table.
- Reshape-like ops are free and alias their input: a reader of the alias reads
  the original tensor (from DRAM if that tensor spilled).
- A tensor is spilled when its size (elements x element size) exceeds half of
  the SRAM; graph inputs are always read from DRAM, and graph outputs always
  written to it, by each reader and by their producer respectively.
- ConvTranspose is not on the page, so it is "anything else" (and warned about).
- Utilization is useful MACs / (cycles x P x P) for kernels on the MAC array;
  depthwise convs run on the vector unit and have none.

Quantized, recurrent and control-flow ops (the page's last section):
- ConvInteger and QLinearConv are convs, MatMulInteger and QLinearMatMul are
  MatMuls, at the same rate as their float forms (the NPU's native type is
  int8). QuantizeLinear and DequantizeLinear are free aliases, so a
  DequantizeLinear -> Conv -> QuantizeLinear group costs one conv, and the
  int8 weights behind a DequantizeLinear are the conv's weights. Every
  constant, int32 biases and quantization scales included, moves at the
  element size like any weight.
- LSTM, GRU and RNN with G gates (4, 3, 1), hidden size H, I inputs, batch N,
  per time step and direction: the input and the recurrent MatMul on the MAC
  array, `N * (ceil(I/P) + ceil(H/P)) * ceil(G*H/P)`, then the gate
  arithmetic on the vector unit, `ceil(N*G*H / V)` (each gate pre-activation
  is activated and combined into the state once); the two do not overlap, as
  each step's gates need its MatMuls. Times the sequence length and the
  number of directions. Weights are read once per op.
- If, Loop and Scan are costed from their subgraphs, each simulated as a model
  of its own (`Model.bodies`): what it reads from the outer graph are its
  inputs (read from DRAM: the control-flow op hands them over through memory)
  and what it returns its outputs (written to DRAM). If costs its costlier
  branch; Loop its body times the trip count when that is a constant (an
  upper bound: the condition may end it earlier), else once with a warning
  (also when the count is int64 or int32 max, an exporter's while loop);
  Scan its body once per slice of the scanned axis. The control-flow op adds
  no dispatch of its own: its body's ops each pay theirs. A branch whose
  shapes cannot be found at these input shapes (one that would fail if it
  ran) costs nothing, with a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..analysis import CONV_WEIGHT, body_info, recurrent_shape, subgraph_runs, tensor_shape
from ..ir import Model
from .kernels import FREE, Kernel, kernels_for
from .target import Target


@dataclass(frozen=True)
class KernelCost:
    kernel: Kernel
    unit: str  # mac, vector, memory, free
    compute_cycles: int
    memory_cycles: float
    cycles: float  # max(compute, memory) + dispatch
    dram_bytes: int
    macs: int  # useful MACs done on the MAC array
    spilled: tuple[str, ...]  # tensors it moves through DRAM because they do not fit on chip
    unmodelled: bool = False
    body: tuple["KernelCost", ...] = ()  # a control-flow op's: the kernels of the subgraph it is costed by
    repeats: int = 1  # ... and how many times that subgraph runs

    @property
    def bound(self) -> str:
        if self.unit == "free":
            return "-"
        return "compute" if self.compute_cycles >= self.memory_cycles else "memory"

    def utilization(self, parallelism: int) -> float | None:
        if self.unit not in ("mac", "control") or self.cycles <= 0:
            return None
        return self.macs / (self.cycles * parallelism * parallelism)

    def to_dict(self, parallelism: int) -> dict:
        """JSON-ready: the kernel, its ops, unit, cycles (to 0.1), bound, traffic, MAC utilization at P, spills;
        for a control-flow op also the kernels of its costed subgraph (`body`, one run) and `repeats`."""
        row = {"kernel": self.kernel.name, "ops": [self.kernel.op_type, *self.kernel.fused], "unit": self.unit,
               "compute_cycles": self.compute_cycles, "memory_cycles": round(self.memory_cycles, 1),
               "cycles": round(self.cycles, 1), "bound": self.bound, "dram_bytes": self.dram_bytes,
               "mac_utilization": self.utilization(parallelism), "spilled": list(self.spilled)}
        if self.unit == "control":
            row.update(repeats=self.repeats, body=[k.to_dict(parallelism) for k in self.body])
        return row


@dataclass
class Simulation:
    target: Target
    kernels: list[KernelCost]
    warnings: list[str] = field(default_factory=list)

    @property
    def total_cycles(self) -> float:
        return sum(k.cycles for k in self.kernels)

    @property
    def latency_s(self) -> float:
        return self.total_cycles / self.target.clock_hz

    def to_dict(self, per_kernel: bool = True) -> dict:
        """JSON-ready: the target, total cycles, latency in ms, warnings and (with `per_kernel`) every kernel."""
        kernels = {"kernels": [k.to_dict(self.target.parallelism) for k in self.kernels]} if per_kernel else {}
        return {"target": self.target.name, "cycles": self.total_cycles, "latency_ms": self.latency_s * 1e3,
                "warnings": list(self.warnings), **kernels}

    def cycles_of(self, node_names) -> float:
        """Cycles of the kernels that any of `node_names` belongs to (a block's share)."""
        wanted = set(node_names)
        return sum(k.cycles for k in self.kernels if wanted & set(k.kernel.nodes))


class _Tensors:
    """Sizes, residency and aliasing of the activations, at the target's element size."""

    def __init__(self, model: Model, target: Target):
        self.model = model
        self.info = model.tensor_info
        self.element_bytes = target.element_bytes
        self.half_sram = target.sram_bytes / 2
        self.graph_inputs = {vi.name for vi in model.graph_inputs}

    def elements(self, name: str) -> int:
        info = self.info.get(name)
        if info is None:
            shape = self.model.declared_shape(name)
            known = shape is not None and all(isinstance(d, int) for d in shape)
            return math.prod(shape) if known else 0  # a scalar, shape (), is one element
        return info.elements

    def shape(self, name: str) -> tuple | None:
        return tensor_shape(self.model, name, self.info)

    def bytes(self, name: str) -> int:
        return self.elements(name) * self.element_bytes

    def root(self, name: str) -> str:
        """The tensor a Reshape-like chain aliases."""
        producer = self.model.producer(name)
        while producer is not None and producer.op_type in FREE:
            name = producer.input[0]
            producer = self.model.producer(name)
        return name

    def leaves_chip(self, name: str) -> bool:
        """Whether `name` (or a free alias of it) is a graph output."""
        pending = [name]
        while pending:
            current = pending.pop()
            if self.model.is_graph_output(current):
                return True
            pending.extend(r.output[0] for r in self.model.consumers(current) if r.op_type in FREE)
        return False

    def spills(self, name: str) -> bool:
        return self.bytes(name) > self.half_sram


def _compute(kernel: Kernel, model: Model, tensors: _Tensors, target: Target) -> tuple[str, int, int, bool]:
    """(unit, compute cycles, useful MACs, unmodelled) of one kernel."""
    P, V = target.parallelism, target.vector_lanes
    node = model.node(kernel.name)
    out = node.output[0]
    out_shape = tensors.info[out].shape if out in tensors.info else ()
    kind = kernel.kind
    if kind in ("conv", "grouped_conv", "depthwise"):
        weight = tensors.shape(node.input[CONV_WEIGHT[node.op_type]])
        groups = model.attr(node, "group", 1)
        batch, out_channels, spatial = out_shape[0], out_shape[1], math.prod(out_shape[2:])
        in_channels = tensors.info[node.input[0]].shape[1]
        window = math.prod(weight[2:])
        macs = batch * spatial * out_channels * weight[1] * window
        if kind == "depthwise":
            return "vector", batch * spatial * window * math.ceil(out_channels / V), 0, False
        folds = math.ceil(in_channels / groups / P) * math.ceil(out_channels / groups / P)
        return "mac", groups * batch * spatial * window * folds, macs, False
    if kind == "matmul":
        a = tensors.info[node.input[0]].shape
        k = a[0] if node.op_type == "Gemm" and model.attr(node, "transA", 0) else a[-1]
        rows, n = math.prod(out_shape[:-1]), out_shape[-1]
        return "mac", rows * math.ceil(k / P) * math.ceil(n / P), rows * k * n, False
    if kind == "recurrent":
        shape = recurrent_shape(model, node, tensors.info)
        if shape is None:
            return "vector", math.ceil(tensors.elements(out) / V), 0, True
        gate_rows = shape.gates * shape.hidden
        matmuls = shape.batch * (math.ceil(shape.inputs / P) + math.ceil(shape.hidden / P)) * math.ceil(gate_rows / P)
        gate_arithmetic = math.ceil(shape.batch * gate_rows / V)
        return "mac", shape.steps * shape.directions * (matmuls + gate_arithmetic), shape.macs, False
    if kind == "free":
        return "free", 0, 0, False
    if kind in ("memory", "gather"):
        written = sum(tensors.bytes(o) for o in node.output if o)
        return "memory", math.ceil(written / target.dram_bytes_per_cycle), 0, False
    if kind == "elementwise":
        elements = max((tensors.elements(i) for i in node.input if i), default=0)
        return "vector", math.ceil(elements / V), 0, False
    if kind == "pool":
        return "vector", math.ceil(tensors.elements(node.input[0]) / V), 0, False
    if kind == "norm":
        return "vector", 4 * math.ceil(tensors.elements(node.input[0]) / V), 0, False
    return "vector", math.ceil(tensors.elements(out) / V), 0, True


def _dram_bytes(kernel: Kernel, model: Model, tensors: _Tensors) -> tuple[int, list[str]]:
    """Bytes this kernel moves between DRAM and the chip, and the spilled tensors among them."""
    if kernel.kind == "free":
        return 0, []
    spilled = []
    if kernel.kind == "gather":  # only the gathered rows are read
        total = sum(tensors.bytes(o) for o in kernel.outputs)
    else:
        total = sum(tensors.elements(w) for w in kernel.weights) * tensors.element_bytes
    for name in kernel.inputs:
        root = tensors.root(name)
        if root in tensors.graph_inputs:
            total += tensors.bytes(name)
        elif tensors.spills(root):
            total += tensors.bytes(name)
            spilled.append(root)
    for name in kernel.outputs:
        if tensors.spills(name):
            total += tensors.bytes(name)
            spilled.append(name)
        elif tensors.leaves_chip(name):
            total += tensors.bytes(name)
    return total, spilled


def simulate(model: Model, target: Target) -> Simulation:
    """Cycle-level cost of `model` on a simulated NPU target."""
    if not target.simulated:
        raise ValueError(f"target {target.name} is measured, not simulated")
    tensors = _Tensors(model, target)
    costs, unmodelled, warnings = [], set(), []
    for kernel in kernels_for(model, target):
        if kernel.kind == "control":
            costs.append(_control_flow(kernel, model, target, warnings))
            continue
        unit, compute, macs, is_unmodelled = _compute(kernel, model, tensors, target)
        if is_unmodelled:
            unmodelled.add(kernel.op_type)
        dram, spilled = _dram_bytes(kernel, model, tensors)
        memory = dram / target.dram_bytes_per_cycle
        dispatch = 0 if unit == "free" else target.dispatch_cycles
        costs.append(KernelCost(kernel, unit, compute, memory, max(compute, memory) + dispatch, dram, macs,
                                tuple(spilled), is_unmodelled))
    warnings += [f"op {op} is not modelled by {target.name}: costed as ceil(output elements / V) on the vector unit"
                 for op in sorted(unmodelled)]
    return Simulation(target, costs, list(dict.fromkeys(warnings)))


def _control_flow(kernel: Kernel, model: Model, target: Target, warnings: list[str]) -> KernelCost:
    """If, Loop, Scan: their subgraphs simulated as models of their own, the costlier
    alternative counted, as many times as the body runs (`analysis.subgraph_runs`)."""
    node = model.node(kernel.name)
    runs = subgraph_runs(model, node)
    if runs.warning:
        warnings.append(runs.warning)
    chosen: Simulation | None = None
    for attribute, body in runs.alternatives:
        if body_info(body) is None:
            warnings.append(f"{node.name} ({node.op_type}): the shapes inside {attribute} are unknown; "
                            "its nodes cost nothing")
            continue
        simulated = simulate(body, target)
        warnings.extend(simulated.warnings)
        if chosen is None or simulated.total_cycles > chosen.total_cycles:
            chosen = simulated
    inner = chosen.kernels if chosen is not None else []
    n = runs.repeats
    return KernelCost(kernel, "control", n * sum(k.compute_cycles for k in inner),
                      n * sum(k.memory_cycles for k in inner), n * sum(k.cycles for k in inner),
                      n * sum(k.dram_bytes for k in inner), n * sum(k.macs for k in inner),
                      tuple(dict.fromkeys(name for k in inner for name in k.spilled)), body=tuple(inner), repeats=n)
