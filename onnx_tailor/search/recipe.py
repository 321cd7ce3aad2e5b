"""Recipes: the chosen sequence of rewrites, replayable on the same model.

A recipe names each step by pass, anchor node and parameters, and carries
the hash of the canonical source model (and, when a step fits weights, the
fingerprint of the calibration data it was fitted on). Replaying checks both
and refuses anything else, so the same recipe on the same model and data
gives a byte-identical model; `optimize` writes its own result by replaying
its recipe, so that this holds by construction.

The data's path is written relative to the recipe file and read back
relative to it, so that a recipe and its data can move together (a
repository, an artifact folder); the fingerprint, not the path, is what
replaying checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import accuracy
from ..accuracy import RANDOM
from ..errors import TailorError
from ..ir import Model
from ..ir.io import write_text_atomic
from ..passes import Exactness, Step, apply_step, get_pass

FORMAT = "onnx-tailor-recipe/1"
IN_MEMORY = "in-memory"  # the data source of a recipe made from arrays handed over in Python


class RecipeError(TailorError):
    """A recipe that does not fit the model or data it is replayed on, or is malformed."""


@dataclass
class Recipe:
    source_hash: str
    steps: tuple[Step, ...]
    input_shapes: dict[str, tuple[int, ...]]
    calibration_fingerprint: str | None = None  # of the data lossy steps were fitted on
    data: dict | None = None  # how the data was split (path, seed, calibration fraction, all three fractions)
    target: str | None = None
    origin: Path | None = field(default=None, compare=False)  # the file it was read from, for messages

    def to_dict(self) -> dict:
        return {"format": FORMAT, "source_model_hash": self.source_hash, "target": self.target,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "calibration": {"fingerprint": self.calibration_fingerprint, **(self.data or {})},
                "steps": [s.to_dict() for s in self.steps]}

    @property
    def content_hash(self) -> str:
        """sha256 of what decides the replayed model: the source model, shapes, target, calibration
        fingerprint and split, and the steps; not where the data file was (that depends on where the
        recipe is written)."""
        content = self.to_dict()
        content["calibration"].pop("source", None)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def data_source(self) -> str | None:
        """The data the recipe was made with: a path (for a recipe read from a file, joined to the
        recipe's folder, so that it holds from any working folder), 'random', or None when it was made
        without data or with data held in memory."""
        source = (self.data or {}).get("source")
        return None if source in (None, IN_MEMORY) else source

    def to_json(self, path: Path) -> str:
        """recipe.json's text for a recipe to be written at `path`: a data path is stored relative to
        the recipe's folder."""
        content = self.to_dict()
        source = content["calibration"].get("source")
        if source not in (None, IN_MEMORY) and Path(source).exists():
            folder = Path(path).resolve().parent
            try:
                content["calibration"]["source"] = Path(os.path.relpath(Path(source).resolve(), folder)).as_posix()
            except ValueError:  # on another drive (Windows): no relative path exists, the absolute one stays
                content["calibration"]["source"] = str(Path(source).resolve())
        return json.dumps(content, indent=2) + "\n"

    def write(self, path: Path) -> None:
        write_text_atomic(path, self.to_json(path))

    @property
    def needs_data(self) -> bool:
        return any(get_pass(s.pass_name).exactness is Exactness.LOSSY for s in self.steps)


def read_recipe(path: Path) -> Recipe:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{path}: not a recipe ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RecipeError(f"{path}: not an onnx-tailor recipe (format is not {FORMAT})")
    return _parse(raw, _Where(path))


class _Where:
    """Says which field of which recipe is wrong, and what it should have been."""

    def __init__(self, path: Path):
        self.path = path

    def wrong(self, key: str, expected: str, value) -> RecipeError:
        return RecipeError(f"{self.path}: malformed recipe: '{key}' must be {expected}, not {json.dumps(value)[:60]}")

    def missing(self, key: str) -> RecipeError:
        return RecipeError(f"{self.path}: malformed recipe: '{key}' is missing")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse(raw: dict, where: _Where) -> Recipe:
    """Every field checked for its type before use: a hand-edited recipe fails here, in one line."""
    for key in ("source_model_hash", "steps"):
        if key not in raw:
            raise where.missing(key)
    if not isinstance(raw["source_model_hash"], str):
        raise where.wrong("source_model_hash", "a string", raw["source_model_hash"])
    if raw.get("target") is not None and not isinstance(raw["target"], str):
        raise where.wrong("target", "a string", raw["target"])
    if not isinstance(raw["steps"], list):
        raise where.wrong("steps", "a list of steps", raw["steps"])
    steps = tuple(_step(step, where, f"steps[{index}]") for index, step in enumerate(raw["steps"]))
    shapes = raw.get("input_shapes") or {}
    if not isinstance(shapes, dict):
        raise where.wrong("input_shapes", "an object of input name -> [dims]", shapes)
    for name, dims in shapes.items():
        if not (isinstance(dims, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                               for d in dims)):
            raise where.wrong(f"input_shapes.{name}", "a list of positive integers", dims)
    calibration = raw.get("calibration") or {}
    if not isinstance(calibration, dict):
        raise where.wrong("calibration", "an object", calibration)
    calibration = dict(calibration)
    _check_calibration(calibration, where)
    fingerprint = calibration.pop("fingerprint", None)
    source = calibration.get("source")
    if isinstance(source, str) and source not in (IN_MEMORY, RANDOM) and not Path(source).is_absolute():
        calibration["source"] = str(Path(where.path).parent / source)
    return Recipe(raw["source_model_hash"], steps, {k: tuple(v) for k, v in shapes.items()},
                  fingerprint, calibration or None, raw.get("target"), Path(where.path))


def _step(raw, where: _Where, key: str) -> Step:
    if not isinstance(raw, dict):
        raise where.wrong(key, "an object with 'pass', 'anchor' and 'params'", raw)
    for name in ("pass", "anchor"):
        if not isinstance(raw.get(name), str):
            raise where.wrong(f"{key}.{name}", "a string", raw.get(name))
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise where.wrong(f"{key}.params", "an object of name -> value", params)
    get_pass(raw["pass"])  # an unknown pass fails before any model is loaded
    return Step(raw["pass"], raw["anchor"], tuple(sorted(params.items())))


# How each calibration field must look: how `api.apply_recipe` splits the data again.
_CALIBRATION = {
    "fingerprint": ("a string", lambda v: isinstance(v, str)),
    "source": ("a string (the data's path)", lambda v: isinstance(v, str)),
    "seed": ("an integer from 0 to 2**32-1", lambda v: isinstance(v, int) and not isinstance(v, bool)
             and 0 <= v < 2**32),
    "fraction": ("a number between 0 and 1", lambda v: _is_number(v) and 0 < v < 1),
    "split": ("three fractions [calibration, selection, test]",
              lambda v: isinstance(v, list) and len(v) == 3 and all(_is_number(f) and 0 <= f <= 1 for f in v)),
}


def _check_calibration(calibration: dict, where: _Where) -> None:
    for key, value in calibration.items():
        if value is None or key not in _CALIBRATION:  # null: not recorded; unknown keys: a newer writer's
            continue
        expected, accepts = _CALIBRATION[key]
        if not accepts(value):
            raise where.wrong(f"calibration.{key}", expected, value)


SPLIT_PARTS = ("calibration", "selection", "test")


def split_part(recipe: Recipe, dataset, part: str):
    """The `part` of `dataset` that the recipe's `optimize` run used (calibration, selection, or test:
    the split whose drop the report quotes), from the same seed and fractions; the data is checked
    against the recipe's calibration fingerprint, since other data would give other samples."""
    if part not in SPLIT_PARTS:
        raise RecipeError(f"unknown split part '{part}'; choose one of {', '.join(SPLIT_PARTS)}")
    made_with = recipe.data or {}
    if "split" not in made_with:
        raise RecipeError("this recipe was made without --data: it has no split to score on")
    split = accuracy.split_three(dataset, tuple(made_with["split"]), made_with.get("seed", 0))
    if recipe.calibration_fingerprint and split.calibration.fingerprint != recipe.calibration_fingerprint:
        raise RecipeError("--data differs from the data the recipe was made with, so its split would hold other "
                          "samples than the report's; give the same file")
    return getattr(split, part)


def replay(recipe: Recipe, model: Model, calibration: dict | None = None,
           calibration_fingerprint: str | None = None) -> Model:
    """Apply the recipe's steps to `model` in order; refuses a different model or data."""
    return replay_each(recipe, model, calibration, calibration_fingerprint)[-1]


def replay_each(recipe: Recipe, model: Model, calibration: dict | None = None,
                calibration_fingerprint: str | None = None) -> list[Model]:
    """`model` and the model after each of the recipe's steps, in order (see `replay`)."""
    if model.content_hash != recipe.source_hash:
        raise RecipeError(f"this recipe was made for another model (canonical hash {recipe.source_hash[:12]}, "
                          f"this model {model.content_hash[:12]}); it replays only on the model it was made for")
    if recipe.needs_data:
        if calibration is None:
            raise RecipeError("this recipe has lossy steps fitted on calibration data: give the same --data")
        if recipe.calibration_fingerprint and calibration_fingerprint != recipe.calibration_fingerprint:
            raise RecipeError("the calibration data differs from the data the recipe was made with "
                              "(same file, seed and split needed for an identical result)")
    models = [model]
    for step in recipe.steps:
        models.append(apply_step(models[-1], step, calibration, reference=model).model)
    return models
