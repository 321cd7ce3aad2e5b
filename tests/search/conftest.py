"""The tiny synthetic MobileNet the search tests run on (three IBN blocks at 16x16): a whole search takes seconds."""

from __future__ import annotations

import pytest

from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs import tiny_mobilenet


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model(canonicalize(tiny_mobilenet()))
