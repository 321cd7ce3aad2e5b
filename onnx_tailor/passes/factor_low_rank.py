"""factor_low_rank: replace a constant weight matrix by the product of two thin ones (truncated SVD).

Every site is a product x·W with a constant W of K x N (the orientation below):

    MatMul(x, W)                              W: [K, N]
    Gemm(A, B, C, alpha, beta, transA, transB) W = B, or B^T when transB
    Conv 1x1, group 1 (W: [Co, Ci, 1, 1])     W = W[:, :, 0, 0]^T: [Ci, Co], per pixel
    Gather(E, ids, axis=0) (E: [V, D])        W = E: the lookup is onehot(ids)·E

Before:  x -> Op(W) -> y
After:   x -> Op_u(U_r) -> h -> Op_v(V_r) -> y        (y keeps its name)

    MatMul:  MatMul(x, U_r) -> MatMul(h, V_r)
    Gemm:    MatMul(A, U_r) (Gemm(A, U_r, transA=1) when transA) -> Gemm(h, V_r, C, alpha, beta)
    Conv:    Conv(x, U_r^T: [r, Ci, 1, 1], the original strides/pads/dilations, no bias)
             -> Conv(h, V_r^T: [Co, r, 1, 1], bias)
    Gather:  Gather(U_r: [V, r], ids) -> MatMul(h, V_r)

    W = U S Vt (float64 SVD);  U_r = U[:, :r] sqrt(S_r),  V_r = sqrt(S_r) Vt[:r]

The square root of S goes to both sides so that both factors have the same
singular values (sqrt(s_i)) and so the same range: a target that quantizes
each factor per tensor loses as little on one as on the other. With all of S
on one side one factor would be orthonormal (entries ~1/sqrt(K)) and the other
would carry the whole scale.

Conv: with a 1x1 kernel, strides, pads, dilations and auto_pad only choose
which pixels are read, so the first factor keeps them all and the second is
a plain 1x1 conv; the padded border stays exact because the bias sits on the
second factor (0·V_r + b = b, as before).

The rank r: `rank` when it is given, else the smallest r whose singular values
hold at least `energy` of ||W||_F^2 (sum s_i^2 for i < r over the total, with
1e-9 slack so an exact tie picks the smaller r); then r is rounded up to a
multiple of `multiple` (P, the target's parallelism factor) and capped at
min(K, N). The rank is chosen from the weights alone, so `find()` needs no data.

Parameters: K·N -> r·(K + N) (bias unchanged). MACs: MatMul, Gemm and Conv
scale by the same factor per output position; a Gather had none and gains
r·D per looked-up id (it trades table memory for compute).

Lossy, except for r >= rank(W) (in particular r = min(K, N)), where the
product is W up to float rounding. The local error is the relative L2 change
of the site's output tensor y on calibration inputs.

`method=whitened` (data-aware): the truncation minimises the error of the
output x·W on the calibration inputs instead of the error of W. With
G = E[x^T x] (second moment of the site's input rows, plus a 1e-6 relative
ridge; for a Gather, diag of the id frequencies), the best rank-r map is

    W_r = W Q Q^T,   Q = top-r eigenvectors of W^T G W  (N x r)

(plain SVD is the same formula with G = I). Factors: U_r = W Q, V_r = Q^T,
balanced column by column as above. The rank still comes from the weight
spectrum, so both methods use the same r and save the same parameters.
It needs calibration inputs: seeded random ones would fit the factors to
noise (and a Gather to ids 0..7), so without them it refuses
(`needs_calibration`); its preview, which only needs the structure, is the
plain SVD's.

Conditions: the weight is a floating-point initializer that no other node
reads (factoring one reader of a shared table would keep the table and add
the factors); MatMul: the constant is the right operand and 2-D; Conv: group
1 and a kernel of ones; Gather: axis 0 and a 2-D table; r·(K + N) < K·N.
A node this pass made is not factored again (it is recognised by its name,
`<site>/low_rank_u|v`): refactoring a factor compounds the error, where
factoring the original at a lower rank would not. Gathers from run-time
tensors (shape arithmetic) and depthwise/grouped KxK convs are not near
misses and are passed over silently.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..ir import Model
from ..ir.conv_geometry import ConvGeometry
from .base import MAX_MULTIPLE, Declined, Exactness, Param, Pass, Site
from .capture import Calibration, capture
from .graph_edit import fresh_name, nodes_by_name
from .least_squares import single_threaded_blas

ENERGY_SLACK = 1e-9  # a kept fraction this close below `energy` counts as reaching it (ties pick the smaller r)
RIDGE = 1e-6  # whitened: G + RIDGE * mean(diag G) * I, so directions the data never shows still count a little
_FACTOR_NAME = re.compile(r"/low_rank_[uv](_\d+)?$")
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class _Matrix:
    """A site's weight seen as the K x N matrix of x·W."""

    kind: str  # MatMul | Gemm | Conv | Gather
    weight: str  # initializer name
    k: int
    n: int


class FactorLowRank(Pass):
    name = "factor_low_rank"
    exactness = Exactness.LOSSY
    summary = "truncated SVD of a constant MatMul/Gemm/1x1 Conv weight or Gather embedding table: two thin factors"
    params = (
        Param("rank", int, 0, "rank r of the factors; 0 chooses it by energy", at_least=0),
        Param("energy", float, 0.99, "keep the smallest r whose singular values hold this fraction of ||W||^2",
              above=0.0, at_most=1.0),
        Param("multiple", int, 1, "round r up to a multiple of P, the target's parallelism factor", at_least=1,
              at_most=MAX_MULTIPLE),
        Param("method", str, "svd", "svd (best for the weights) or whitened (best for the outputs on calibration data)",
              choices=("svd", "whitened")),
    )

    def needs_calibration(self, params) -> bool:
        return params.get("method") == "whitened"

    # -- finding sites ----------------------------------------------------------------

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        for node in model.nodes:
            found = _match(model, node)
            if found is None:
                continue
            if isinstance(found, str):
                yield self.decline(node.name, found)
                continue
            reason = _why_not_weight(model, node, found)
            if reason:
                yield self.decline(node.name, reason)
                continue
            energies = _cached_energy_profile(model, node, found)
            if energies is None:
                yield self.decline(node.name, f"its {found.k} x {found.n} weight is all zeros")
                continue
            r, how = choose_rank(energies, params["rank"], params["energy"], params["multiple"])
            k, n = found.k, found.n
            if r * (k + n) >= k * n:
                best = (k * n - 1) // (k + n)
                hint = f"; a rank of at most {best} would" if best >= 1 else "; no rank would"
                what = "parameters" if found.kind == "Gather" else "parameters or MACs"  # a lookup has no MACs to cut
                yield self.decline(node.name, f"rank {r} ({how}) would not reduce {what}: "
                                              f"{r} x ({k} + {n}) = {r * (k + n)} >= {k} x {n} = {k * n}{hint}")
                continue
            yield self.site(node.name, {node.name}, {"rank": r, "method": params["method"]}, match=found,
                            summary=_summary(found, r, energies, how))

    def output_tensor(self, model: Model, site: Site) -> str:
        """The site's output: the second factor writes the tensor the original op wrote."""
        return model.node(site.anchor).output[0]

    # -- rewriting --------------------------------------------------------------------

    def preview(self, model: Model, site: Site) -> Model:
        """The factored graph's structure, the same whatever the method: factors of the site's rank holding
        zeros, since a preview is only scored and a score reads a weight's dims, never its values (the SVD of
        MobileNetV2's 1000 x 1280 classifier took 0.65 s of every preview of it)."""
        rank, found = int(site.param_dict["rank"]), site.match
        dtype = model.constant(found.weight).dtype
        return self._built(model, site, np.zeros((found.k, rank), dtype), np.zeros((rank, found.n), dtype))

    def rewrite(self, model: Model, site: Site, calib: Calibration | None = None,
                reference: Model | None = None) -> Model:
        whitened = site.param_dict.get("method") == "whitened"
        gram = _input_gram(model, model.node(site.anchor), site.match, calib) if whitened else None
        return self._factored(model, site, gram)

    def _factored(self, model: Model, site: Site, gram: np.ndarray | None) -> Model:
        node, found = model.node(site.anchor), site.match
        left, right = factor(_matrix(model, node, found), int(site.param_dict["rank"]), gram)
        dtype = model.constant(found.weight).dtype
        return self._built(model, site, left.astype(dtype), right.astype(dtype))

    def _built(self, model: Model, site: Site, left: np.ndarray, right: np.ndarray) -> Model:
        """`model` with the site's op replaced by two ops of the factors `left` [K, r] and `right` [r, N]."""
        found, dtype = site.match, left.dtype
        graph = model.to_graphsurgeon()
        original = nodes_by_name(graph)[site.anchor]
        hidden = gs.Variable(fresh_name(graph, f"{site.anchor}/low_rank_h"), dtype=dtype)
        u_name = fresh_name(graph, f"{site.anchor}/low_rank_u")
        v_name = fresh_name(graph, f"{site.anchor}/low_rank_v")

        def const(suffix: str, value: np.ndarray) -> gs.Constant:
            return gs.Constant(fresh_name(graph, f"{site.anchor}.{suffix}"), np.ascontiguousarray(value))

        x, outputs = original.inputs[0], list(original.outputs)
        if found.kind == "MatMul":
            first = gs.Node("MatMul", u_name, inputs=[x, const("weight_u", left)], outputs=[hidden])
            second = gs.Node("MatMul", v_name, inputs=[hidden, const("weight_v", right)], outputs=outputs)
        elif found.kind == "Gemm":
            attrs = original.attrs
            if int(attrs.get("transA", 0)):
                first = gs.Node("Gemm", u_name, attrs={"transA": 1}, inputs=[x, const("weight_u", left)],
                                outputs=[hidden])
            else:
                first = gs.Node("MatMul", u_name, inputs=[x, const("weight_u", left)], outputs=[hidden])
            second = gs.Node("Gemm", v_name, attrs={"alpha": float(attrs.get("alpha", 1.0)),
                                                    "beta": float(attrs.get("beta", 1.0))},
                             inputs=[hidden, const("weight_v", right)] + list(original.inputs[2:3]), outputs=outputs)
        elif found.kind == "Conv":
            ones = [1] * (model.constant(found.weight).ndim - 2)
            kernel = lambda m: m.T.reshape(m.shape[1], m.shape[0], *ones)  # noqa: E731  [in, out] -> [out, in, 1..]
            spatial = {k: v for k, v in original.attrs.items() if k != "group"} | {"group": 1, "kernel_shape": ones}
            first = gs.Node("Conv", u_name, attrs=spatial, inputs=[x, const("weight_u", kernel(left))],
                            outputs=[hidden])
            second = gs.Node("Conv", v_name, attrs={"kernel_shape": ones},
                             inputs=[hidden, const("weight_v", kernel(right))] + list(original.inputs[2:3]),
                             outputs=outputs)
        else:  # Gather: look up rows of U_r, then map them back up to D
            first = gs.Node("Gather", u_name, attrs={"axis": 0}, inputs=[const("table_u", left), original.inputs[1]],
                            outputs=[hidden])
            second = gs.Node("MatMul", v_name, inputs=[hidden, const("weight_v", right)], outputs=outputs)
        original.outputs.clear()
        graph.nodes.extend([first, second])
        return model.from_graphsurgeon(graph)


# -- the linear algebra (public for tests and benchmarks) --------------------------------


def energy_kept(singular_values: np.ndarray) -> np.ndarray:
    """Cumulative fraction of sum(s^2) kept by ranks 1..len(s)."""
    s2 = np.asarray(singular_values, np.float64) ** 2
    return np.cumsum(s2) / s2.sum()


def choose_rank(energies: np.ndarray, rank: int = 0, energy: float = 0.99, multiple: int = 1) -> tuple[int, str]:
    """(r, how it was chosen) from the cumulative energies of ranks 1..min(K, N)."""
    full = len(energies)
    if rank > 0:
        r, how = rank, "given"
    else:
        r = int(np.searchsorted(energies, energy - ENERGY_SLACK) + 1)
        r, how = min(r, full), f"for {energy:.4g} of the energy"
    if multiple > 1 and r % multiple:
        r, how = math.ceil(r / multiple) * multiple, f"{how}, rounded up to a multiple of {multiple}"
    if r > full:
        r, how = full, f"{how}, capped at min(K, N)"
    return r, how


def factor(weight: np.ndarray, rank: int, gram: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Balanced factors (U_r [K, r], V_r [r, N]) of `weight` [K, N], in float64.

    `gram` is E[x^T x] of the inputs (a [K, K] matrix, or its diagonal as a
    vector): the factors then minimise the output error on those inputs.
    """
    w = np.asarray(weight, np.float64)
    if gram is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        root = np.sqrt(s[:rank])
        return u[:, :rank] * root, root[:, None] * vt[:rank]
    gram = np.asarray(gram, np.float64)
    if gram.ndim == 1:
        ridge = RIDGE * max(float(gram.mean()), np.finfo(np.float64).tiny)
        output_gram = (w * (gram + ridge)[:, None]).T @ w
    else:
        ridge = RIDGE * max(float(np.trace(gram)) / len(gram), np.finfo(np.float64).tiny)
        output_gram = w.T @ (gram + ridge * np.eye(len(gram))) @ w
    _, vectors = np.linalg.eigh((output_gram + output_gram.T) / 2)
    q = vectors[:, ::-1][:, :rank]  # top-r principal directions of the outputs x·W
    left, right = w @ q, q.T
    # The SVD factors have equal column/row norms; give these the same balance.
    scale = np.sqrt(np.linalg.norm(left, axis=0))
    scale[scale == 0] = 1.0
    return left / scale, right * scale[:, None]


# -- matching -----------------------------------------------------------------------------


def _match(model: Model, node: onnx.NodeProto) -> _Matrix | str | None:
    """The site's matrix, a reason it is a near miss, or None when the node is not a candidate."""
    op = node.op_type
    if op not in ("MatMul", "Gemm", "Conv", "Gather"):
        return None
    if _FACTOR_NAME.search(node.name):
        return "it is a factor made by factor_low_rank; factor the original at a lower rank instead"
    if op == "Gather":
        shape = model.declared_shape(node.input[0])
        if not model.is_constant(node.input[0]) or not _is_float(model, node.input[0]):
            return None  # a lookup in run-time values or an integer table (shapes), not an embedding
        if len(shape) != 2:
            return f"its table is {len(shape)}-D; only 2-D embedding tables [V, D] are factored"
        if model.attr(node, "axis", 0) != 0:
            return f"it gathers along axis {model.attr(node, 'axis')}, not the rows (axis 0) of the table"
        return _Matrix("Gather", node.input[0], shape[0], shape[1])
    if op == "Conv":
        shape = model.declared_shape(node.input[1])
        group = model.attr(node, "group", 1)
        one_by_one = shape is not None and all(d == 1 for d in shape[2:])
        if group != 1:
            return f"it is a grouped conv (group {group}); only group-1 1x1 convs are matrices" if one_by_one else None
        if not model.is_constant(node.input[1]):
            return "its weights are computed at run time, not a constant"
        if not one_by_one:
            kernel = "x".join(str(d) for d in shape[2:])
            return f"its kernel is {kernel}; only 1x1 convs are matrices"
        return _Matrix("Conv", node.input[1], shape[1], shape[0])
    if not model.is_constant(node.input[1]):
        if op == "MatMul" and model.is_constant(node.input[0]):
            return "the constant is the left operand (W·x); only x·W is factored"
        return "both operands are computed at run time; there is no constant weight"
    shape = model.declared_shape(node.input[1])
    if len(shape) != 2:
        return f"its weight is {len(shape)}-D; only 2-D weight matrices are factored"
    if op == "Gemm" and model.attr(node, "transB", 0):
        return _Matrix("Gemm", node.input[1], shape[1], shape[0])
    return _Matrix(op, node.input[1], shape[0], shape[1])


def _why_not_weight(model: Model, node: onnx.NodeProto, found: _Matrix) -> str | None:
    if not _is_float(model, found.weight):
        return f"its weight '{found.weight}' is not floating point (quantized weights are not factored)"
    others = [n.name for n in model.consumers(found.weight) if n.name != node.name]
    if others:
        return (f"its weight '{found.weight}' is also read by {others[0]}; factoring one reader would keep "
                "the original and add the factors")
    return None


def _is_float(model: Model, tensor: str) -> bool:
    proto = model.initializer(tensor)
    return proto is not None and proto.data_type in _FLOAT_TYPES


def _matrix(model: Model, node: onnx.NodeProto, found: _Matrix) -> np.ndarray:
    """The weight as the [K, N] matrix of x·W, in float64."""
    value = model.constant(found.weight).astype(np.float64)
    if found.kind == "Conv":
        return value.reshape(value.shape[0], value.shape[1]).T
    if found.kind == "Gemm" and model.attr(node, "transB", 0):
        return value.T
    return value


# Energy profiles by weight (its proto's digest, and how the site reads it): the search runs `find()` on every
# model it reaches, and a step leaves all but a few weights as they were, so the eigenvalues of the others
# (most of a search's `find` time on MobileNetV2-224) are the ones it computed before. Bounded: oldest out first.
_ENERGIES: dict[tuple, np.ndarray | None] = {}
_ENERGIES_KEPT = 4096


def _cached_energy_profile(model: Model, node: onnx.NodeProto, found: _Matrix) -> np.ndarray | None:
    """`_energy_profile` of the site's weight matrix, computed once per distinct weight."""
    tensor = model.initializer(found.weight)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:  # its bytes live in a file the digest cannot see
        return _energy_profile(_matrix(model, node, found))
    key = (hashlib.sha256(tensor.SerializeToString(deterministic=True)).digest(), found.kind,
           bool(model.attr(node, "transB", 0)))
    if key not in _ENERGIES:
        with single_threaded_blas():  # small Gram matrices: threads only spin-wait on a busy machine (3x slower)
            energies = _energy_profile(_matrix(model, node, found))
        if energies is not None:
            energies.flags.writeable = False  # shared by every later find
        if len(_ENERGIES) >= _ENERGIES_KEPT:
            del _ENERGIES[next(iter(_ENERGIES))]
        _ENERGIES[key] = energies
    return _ENERGIES[key]


def _energy_profile(weight: np.ndarray) -> np.ndarray | None:
    """Cumulative energies of ranks 1..min(K, N); None for an all-zero matrix.

    The eigenvalues of the smaller Gram matrix are the squared singular
    values; that is cheaper than an SVD of a tall embedding table, and `find()`
    runs after every application (`_cached_energy_profile` keeps them by weight).
    """
    gram = weight.T @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.T
    s2 = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
    total = s2.sum()
    return None if total <= 0 else np.cumsum(s2) / total


def _summary(found: _Matrix, r: int, energies: np.ndarray, how: str) -> str:
    k, n = found.k, found.n
    text = (f"{found.kind} {k} x {n} -> rank {r}: parameters {k * n} -> {r * (k + n)} "
            f"({energies[r - 1]:.2%} of the energy kept; rank {how})")
    if found.kind == "Gather":
        text += f"; adds {r * n} MACs per looked-up id"
    return text


# -- calibration statistics for method=whitened -----------------------------------------


def _input_gram(model: Model, node: onnx.NodeProto, found: _Matrix, calib: Calibration) -> np.ndarray:
    """E[x^T x] over the rows x that meet W on the calibration inputs ([K, K], or a diagonal for a Gather)."""
    tensor = node.input[1] if found.kind == "Gather" else node.input[0]
    values = _tensor_values(model, tensor, calib)
    if found.kind == "Gather":
        ids = values.astype(np.int64).ravel() % found.k
        return np.bincount(ids, minlength=found.k).astype(np.float64) / max(ids.size, 1)
    if found.kind == "Conv":
        values = _pixels_read(model, node, values)
        rows = np.moveaxis(values, 1, -1).reshape(-1, found.k)
    elif found.kind == "Gemm" and model.attr(node, "transA", 0):
        rows = values.T
    else:
        rows = values.reshape(-1, found.k)
    rows = rows.astype(np.float64)
    return rows.T @ rows / max(len(rows), 1)


def _tensor_values(model: Model, tensor: str, calib: Calibration) -> np.ndarray:
    if tensor in calib:  # a graph input: read it directly, no need to run the model
        return calib[tensor]
    return capture(model, [tensor], calib)[tensor]


def _pixels_read(model: Model, node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    """The input pixels a strided 1x1 conv reads (padding adds only zeros, which add nothing to E[x^T x])."""
    geometry = ConvGeometry.of(model, node)
    pads, strides = geometry.explicit_pads(x.shape[2:]), geometry.strides
    index = (slice(None), slice(None)) + tuple(slice((-pads[a]) % strides[a], None, strides[a])
                                               for a in range(len(strides)))
    return x[index]
