"""What a written model says about how it was made.

Every model onnx-tailor writes keeps the source model's `doc_string` and
`metadata_props` (canonicalization keeps them, the rewrites do not need to),
and adds to `metadata_props`:
- `onnx_tailor.version`: the tool version that wrote it;
- `onnx_tailor.recipe_hash`: `Recipe.content_hash` of the recipe that
  replays it (`optimize` and `apply --recipe`), so that a deployed model
  names the recipe it came from;
- `onnx_tailor.target`: the target it was fitted to.
The same recipe on the same model writes the same metadata, so replaying
stays byte-identical. The model's content hash ignores all of this
(`Model.content_hash`): the graph is what recipes and caches identify.
"""

from __future__ import annotations

from ..ir import Model
from ..version import __version__
from .recipe import Recipe

PREFIX = "onnx_tailor."


def stamped(model: Model, source: Model, recipe: Recipe | None = None) -> Model:
    """`model` with `source`'s description and metadata, and onnx-tailor's own (replacing any earlier ones)."""
    props = {p.key: p.value for p in source.proto.metadata_props if not p.key.startswith(PREFIX)}
    props[PREFIX + "version"] = __version__
    if recipe is not None:
        props[PREFIX + "recipe_hash"] = recipe.content_hash
        if recipe.target:
            props[PREFIX + "target"] = recipe.target
    return model.with_metadata(source.proto.doc_string, props)
