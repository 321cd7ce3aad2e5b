"""Canonicalization: the one form of a model that every pass and analysis expects.

Exported models come in many spellings of the same network. Canonical form is:
- every `Constant` node lifted to an initializer (Paddle and PyTorch exports
  keep weights in Constant nodes, where a pass would not see them as weights);
- every BatchNormalization that follows a Conv folded into it (our
  `fold_batchnorm` pass, so the folding rule lives in one place);
- onnxruntime's basic-level offline optimization for the generic clean-ups it
  already does well: constant folding, Identity/Dropout removal, and folding a
  per-channel Add/Mul that follows a Conv into the Conv. Three of its rewrites
  are switched off: its own Conv+BN fusion (ours runs), MatMul+Add -> Gemm
  (it changes the model's vocabulary for no gain) and its transpose
  optimizer (it copies a Transpose into every branch below it); the private operator
  domains it lists in `opset_import` are stripped again, since other tools
  reject them. It never changes a type: quantized weights stay quantized and
  a float16 model is left to our own folds (see `ir.cleanup`);
- every run of constant scale/shift ops (Mul, Add, Sub, Div, a stray
  BatchNormalization) folded into the Conv, ConvTranspose, Gemm or MatMul
  beside it where that is exact (`fold_affine`);
- float weights with no subnormal values (`ir.subnormals`: the folds above
  can make them, and a CPU multiplies by them slowly);
- unique, stable node names (the anchors that sites and recipes refer to);
- shapes inferred, with the batch dimension left as the model declared it;
- the model's `doc_string` and `metadata_props` kept as they were.

It is an ordered list of exact proto -> proto rewrites, `CANONICAL_STEPS`, in
the manner of onnxoptimizer's pass manager; `canonicalize` runs them in order.
The order, and why each step is where it is:
1. `lift_constants`: first, so that every later step sees weights and
   BatchNorm parameters as initializers (the fold needs them as constants).
2. `name_nodes`: the fold finds its sites through a `Model`, whose sites are
   anchored by node name; exports may leave names empty or repeated.
3. `fold_all_batchnorms` (the `fold_batchnorm` pass): before onnxruntime's
   clean-up, so that an Add/Mul that followed a BatchNormalization then
   directly follows its Conv, where onnxruntime's Conv+Add/Mul folding takes it.
4. `ort_basic_cleanup` (`ir.cleanup`, which also strips the private domains).
5. `fold_all_affine`: after onnxruntime's constant folding, so that a scale
   spelled Reshape(constant, [1, C, 1, 1]) is a constant by then; it takes
   the runs onnxruntime leaves: before a layer, after a ConvTranspose,
   Gemm or MatMul, with Sub/Div or a BatchNormalization in them.
6. `flush_subnormal_weights`: after every fold that multiplies weights.
7. `name_nodes` again: the nodes onnxruntime creates come out unnamed; names
   given in step 2 stay, so the same export always gets the same names.
8. `infer_shapes` last: shapes for every tensor of the final graph.

Adding a normalization is one line in `CANONICAL_STEPS`, and a test can run
one step alone. `EXPORTED_STEPS` normalizes the representation only (what
`load(..., canonical=False)` gives: the network as exported, the form the
clean-up passes have work to do on).

The steps live where their dependencies allow: the proto utilities in `ir`
(`ir.cleanup`, `ir.shapes`), the fold in its pass; the composition lives
here, above both, because `ir` never imports a pass.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import onnx

from ..ir import Model, Shape, read_proto
from ..ir.cleanup import lift_constants, name_nodes, ort_basic_cleanup
from ..ir.io import check_opset
from ..ir.model import with_metadata
from ..ir.shapes import infer_shapes
from ..ir.subnormals import flush_subnormal_weights
from .fold_affine import fold_all_affine
from .fold_batchnorm import fold_all_batchnorms

Step = Callable[[onnx.ModelProto], onnx.ModelProto]

CANONICAL_STEPS: tuple[Step, ...] = (
    lift_constants,
    name_nodes,
    fold_all_batchnorms,
    ort_basic_cleanup,
    fold_all_affine,
    flush_subnormal_weights,
    name_nodes,
    infer_shapes,
)
EXPORTED_STEPS: tuple[Step, ...] = (lift_constants, name_nodes, infer_shapes)


def canonicalize(proto: onnx.ModelProto, source: str = "model",
                 steps: tuple[Step, ...] = CANONICAL_STEPS) -> onnx.ModelProto:
    """The canonical form of `proto` (see the module docstring). `proto` is not modified.

    `source` names the model in errors (its path, when loaded from a file).
    """
    check_opset(proto, source)
    # onnxruntime's clean-up rebuilds the model without its description and metadata: they are the
    # user's, and the model onnx-tailor writes keeps them.
    doc_string, metadata = proto.doc_string, {p.key: p.value for p in proto.metadata_props}
    for step in steps:
        proto = step(proto)
    if proto.doc_string == doc_string and {p.key: p.value for p in proto.metadata_props} == metadata:
        return proto
    return with_metadata(proto, doc_string, metadata)


def load(path: str | os.PathLike, input_shapes: Mapping[str, Shape] | None = None,
         canonical: bool = True) -> Model:
    """Load a model from disk, canonicalized unless `canonical=False`.

    `canonical=False` keeps the network as exported (BatchNorm unfolded,
    constant sub-graphs unfolded) and only normalizes its representation:
    Constant nodes become initializers, nodes get stable names, shapes are
    inferred. That is the form the clean-up passes have work to do on.
    """
    steps = CANONICAL_STEPS if canonical else EXPORTED_STEPS
    return Model(canonicalize(read_proto(path), str(path), steps), input_shapes)
