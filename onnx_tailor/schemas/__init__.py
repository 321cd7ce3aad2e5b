"""JSON Schemas of what onnx-tailor writes: `report.schema.json`, the format of optimize's report.json."""

from __future__ import annotations

import json
from importlib.resources import files


def report_schema() -> dict:
    """The JSON Schema (draft 2020-12) of report.json, format `onnx-tailor-report/1`."""
    return json.loads(files(__name__).joinpath("report.schema.json").read_text(encoding="utf-8"))
