"""What a user and a pipeline get from `optimize`, `evaluate` and `compare` (issue 14, sections 1-3):
the budget as understood, a versioned report.json that follows its schema, a readable terminal
table, progress with its options, documented exit codes, and the report's numbers reproduced.

One optimize run on the tiny synthetic MobileNet (its nodes renamed as a PyTorch export names
module paths) serves most tests; it takes seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_tailor.analysis import find_ibn_blocks
from onnx_tailor.cli import main
from onnx_tailor.errors import TailorError
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize
from onnx_tailor.schemas import report_schema
from onnx_tailor.search import DEFAULT_MAX_DROP, format_report, optimize
from onnx_tailor.search.context import SearchContext
from onnx_tailor.search.report import REASONS, block_name, faster_but_larger
from tests.graphs import tiny_mobilenet
from tests.test_api import json_keys

PASSES = "fuse_ibn_expansion,densify_depthwise,pad_channels"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def named_model() -> tuple[onnx.ModelProto, list[str]]:
    """The tiny MobileNet, canonical, with each IBN block's nodes under `/features/features.{i + 4}/`:
    block numbers the report must take from the model, not count itself."""
    model = Model(canonicalize(tiny_mobilenet()))
    proto = model.proto
    names = []
    for i, block in enumerate(find_ibn_blocks(model)):
        prefix = f"/features/features.{i + 4}"
        names.append(prefix)
        for node in proto.graph.node:
            if node.name in block.nodes:
                node.name = f"{prefix}/{node.name}"
    return proto, names


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One optimize run through the CLI with every output: model, report, recipe, log file, -v."""
    folder = tmp_path_factory.mktemp("run")
    proto, names = named_model()
    source = folder / "tiny.onnx"
    onnx.save(proto, str(source))
    data = folder / "data.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32))
    paths = {name: folder / name for name in ("out.onnx", "report.json", "recipe.json", "log.txt")}
    result = CliRunner().invoke(main, [str(a) for a in (
        "optimize", source, "--data", data, "--metric", "cosine", "--max-drop", "0.05", "--passes", PASSES,
        "-o", paths["out.onnx"], "--report", paths["report.json"], "--recipe", paths["recipe.json"],
        "--log-file", paths["log.txt"], "-v")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(paths["report.json"].read_text())
    return {"source": source, "data": data, "paths": paths, "result": result, "report": report, "names": names}


# -- a schema checker: jsonschema when installed (the 'test' extra), else the subset the schema uses ----------


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value, schema: dict, root: dict, where: str = "$") -> list[str]:
    """Violations of `schema` (type, const, enum, required, properties, items, min/maxItems, minimum,
    local $ref, allOf, oneOf): enough of JSON Schema for report.schema.json."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, where)
    errors = []
    for part in schema.get("allOf", []):
        errors += schema_errors(value, part, root, where)
    if "oneOf" in schema and sum(not schema_errors(value, s, root, where) for s in schema["oneOf"]) != 1:
        errors.append(f"{where}: not exactly one of oneOf")
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, n) for n in names):
            return errors + [f"{where}: {value!r} is not {names}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing '{key}'" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, root, f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            errors.append(f"{where}: {len(value)} items")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), root, f"{where}[{i}]")
    if "minimum" in schema and _type_ok(value, "number") and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    return errors


def check_report(report: dict) -> list[str]:
    schema = report_schema()
    try:
        import jsonschema
    except ImportError:
        return schema_errors(report, schema, schema)
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(report)]


# -- section 2: a report a pipeline can parse --------------------------------------------------------------


def test_the_report_follows_its_schema_and_is_versioned(run):
    report, schema = run["report"], report_schema()
    assert check_report(report) == [] and schema_errors(report, schema, schema) == []
    assert report["format"] == "onnx-tailor-report/1" and report["tool_version"]
    invocation = report["invocation"]
    assert invocation["model"] == str(run["source"]) and invocation["data"] == str(run["data"])
    assert invocation["report"] == str(run["paths"]["report.json"]) and invocation["max_drop"] == "0.05"
    assert invocation["passes"] == PASSES.split(",") and invocation["seed"] == 0 and invocation["target"] == "npu-p32"
    assert report["within_budget"] is True and report["improved"] is True
    assert report["interrupted"] is False and report["time_budget_exhausted"] is False


def test_the_schema_rejects_what_a_pipeline_could_not_rely_on(run):
    """The checker and the schema can fail: a wrong format, a missing boolean, steps as a count."""
    report, schema = run["report"], report_schema()
    for broken in ({**report, "format": "onnx-tailor-report/0"}, {k: v for k, v in report.items() if k != "improved"},
                   {**report, "steps": 3}, {**report, "original": {**report["original"], "step_count": "0"}}):
        assert check_report(broken) and schema_errors(broken, schema, schema), broken.keys()


def test_steps_is_a_list_everywhere_and_counts_are_step_count(run):
    report = run["report"]
    assert isinstance(report["steps"], list) and report["steps"]
    assert report["original"]["step_count"] == 0 and report["optimized"]["step_count"] == len(report["steps"])
    assert [s["step_count"] for s in report["steps"]] == list(range(1, len(report["steps"]) + 1))
    assert all("steps" not in s for s in report["steps"])


def test_blocks_carry_the_models_own_names_and_reasons_as_lists(run):
    blocks = run["report"]["blocks"]
    assert [b["name"] for b in blocks] == run["names"]
    for block in blocks:
        assert isinstance(block["rewritten_by"], list) and isinstance(block["reasons"], list)
        assert (block["decision"] == "rewritten") == bool(block["rewritten_by"]) and bool(block["reasons"]) != bool(
            block["rewritten_by"])


def test_the_schema_allows_every_reason_a_block_can_be_given():
    """A measured target's blocks can be 'not_measurably_faster': the schema once lacked it."""
    items = report_schema()["properties"]["blocks"]["items"]["properties"]["reasons"]["items"]["enum"]
    assert set(REASONS) | {"not_reached", "outpaced"} == set(items)


def test_block_name_is_the_shared_module_path_or_nothing():
    assert block_name(["/blocks/blocks.8/body/body.0/Conv", "/blocks/blocks.8/Add"]) == "/blocks/blocks.8"
    assert block_name(["Conv16", "Clip26"]) == ""


def test_every_latency_in_json_is_in_milliseconds(run):
    cost = json.loads(invoke("cost", run["source"], "--json", "--per-op").output)
    for payload in (run["report"], cost):
        found = set(json_keys(payload))
        assert not {k for k in found if k.endswith("_s") and k != "time_budget_s"}, found
        assert any(k.endswith("_ms") for k in found)
    assert cost["latency_ms"] == pytest.approx(run["report"]["original"]["predicted_latency_ms"])


# -- section 1: the budget says what it means --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model(canonicalize(tiny_mobilenet()))


def test_each_metric_has_its_own_default_budget(tiny):
    assert DEFAULT_MAX_DROP == {"top1": "1", "agreement": "1", "cosine": "0.01", "sqnr": "3"}
    result = optimize(tiny, "npu-p32", data="random", metric="cosine", passes=["pad_channels"], precision="fp32")
    budget = result.report["budget"]["accuracy"]
    assert budget["max_drop"] == "0.01" and budget["given"] is False and budget["allowed_drop"] == 0.01
    agreement = optimize(tiny, "npu-p32", data="random", metric="agreement", passes=["pad_channels"],
                         precision="fp32").report["budget"]["accuracy"]
    assert agreement["allowed_drop"] == 1 and agreement["units"] == "points"


@pytest.mark.parametrize("metric, max_drop, message", [
    ("cosine", "1", "cannot bind"), ("cosine", "100%", "cannot bind"), ("agreement", "100", "cannot bind"),
    ("sqnr", "3", "infinite when judged in fp32"),
])
def test_a_budget_that_cannot_bind_is_refused_before_the_search(tiny, monkeypatch, metric, max_drop, message):
    monkeypatch.setattr(SearchContext, "__init__", lambda *a, **k: pytest.fail("the search started"))
    with pytest.raises(TailorError, match=message):
        optimize(tiny, "npu-p32", data="random", metric=metric, max_drop=max_drop, passes=["pad_channels"],
                 precision="fp32")


def test_the_budget_is_printed_before_the_search(run):
    stderr = run["result"].stderr.splitlines()
    first = next(i for i, line in enumerate(stderr) if "budget:" in line)
    assert "cosine may drop at most 0.05 from the original's 0.9" in stderr[first]  # in int8: not quite 1
    assert "(--max-drop 0.05, as given), judged in int8" in stderr[first]
    assert all("best so far" not in line and "step " not in line for line in stderr[:first])
    assert any("best so far" in line for line in stderr[first:])


def test_max_drop_that_does_not_parse_is_a_usage_error(tmp_path, run):
    proc = subprocess.run([sys.executable, "-m", "onnx_tailor", "optimize", str(run["source"]), "--max-drop", "abc",
                           "-o", str(tmp_path / "o.onnx")], capture_output=True, text=True)
    assert proc.returncode == 2 and "'abc' is not a number" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_evaluate_and_compare_name_the_interval_option_for_what_it_does(run):
    result = invoke("evaluate", run["source"], "--data", "random", "--max-drop", "1")
    assert result.exit_code == 2 and "--ci-width" in result.output
    result = invoke("evaluate", run["source"], "--data", "random", "--samples", "8", "--reference", run["source"],
                    "--metric", "agreement", "--ci-width", "1", "--json")
    assert result.exit_code == 0, result.output
    assert any("wider than the budget" in w for w in json.loads(result.stdout)["warnings"])


# -- compare: a gate, latency, and the report's own split --------------------------------------------------


def test_compare_fails_over_its_threshold_with_exit_code_5(run, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(tiny_mobilenet(seed=1), str(other))  # other weights: predictions disagree
    same = invoke("compare", run["source"], run["source"], "--data", "random", "--samples", "16", "--fail-over", "0")
    assert same.exit_code == 0, same.output
    assert "B's drop against A: 0 points of agreement; --fail-over 0" in same.stdout
    proc = subprocess.run([sys.executable, "-m", "onnx_tailor", "compare", str(run["source"]), str(other), "--data",
                           "random", "--samples", "16", "--fail-over", "1", "--json"], capture_output=True, text=True)
    assert proc.returncode == 5, proc.stderr
    drop = json.loads(proc.stdout)["drop"]
    assert drop["metric"] == "agreement" and drop["value"] > 1 and drop["failed"] is True
    assert "over --fail-over 1" in proc.stderr


def test_compare_shows_predicted_latency_and_says_faster_but_larger(run):
    result = invoke("compare", run["source"], run["paths"]["out.onnx"], "--data", "random", "--samples", "8",
                    "--target", "npu-p32", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    report = run["report"]
    assert payload["a"]["predicted_latency_ms"] == pytest.approx(report["original"]["predicted_latency_ms"])
    assert payload["b"]["predicted_latency_ms"] == pytest.approx(report["optimized"]["predicted_latency_ms"])
    assert payload["b"]["simulated_latency_ms"] == pytest.approx(report["simulated"]["optimized_ms"])
    table = invoke("compare", run["source"], run["paths"]["out.onnx"], "--data", "random", "--samples", "8",
                   "--target", "npu-p32").stdout
    assert "predicted latency on npu-p32" in table and "simulated latency on npu-p32" in table
    grew = report["optimized"]["param_bytes"] > report["original"]["param_bytes"]
    assert ("B is faster but larger: parameters" in table) == grew


def test_the_reports_test_split_scores_the_same_in_compare_and_evaluate(run):
    """`--recipe R --split test` scores the samples the report quotes: its fp32 figures, to the digit."""
    report, recipe = run["report"], run["paths"]["recipe.json"]
    quoted = report["test"]["fp32"]["optimized"]
    result = invoke("compare", run["source"], run["paths"]["out.onnx"], "--recipe", recipe, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    cosine = json.loads(result.stdout)["b_vs_a"]["cosine"]
    assert cosine["n"] == report["test"]["n"] and cosine["value"] == pytest.approx(quoted["value"], abs=1e-6)
    result = invoke("evaluate", run["paths"]["out.onnx"], "--reference", run["source"], "--metric", "cosine",
                    "--recipe", recipe, "--split", "test", "--json")
    assert json.loads(result.stdout)["scores"]["cosine"]["value"] == pytest.approx(quoted["value"], abs=1e-6)
    selection = invoke("evaluate", run["paths"]["out.onnx"], "--reference", run["source"], "--metric", "cosine",
                       "--recipe", recipe, "--split", "selection", "--json")
    assert json.loads(selection.stdout)["n"] == report["optimized"]["metric"]["n"]


def test_split_needs_a_recipe_and_the_recipes_own_data(run, tmp_path):
    assert invoke("evaluate", run["source"], "--data", "random", "--split", "test").exit_code == 2
    other = tmp_path / "other.npz"
    np.savez(other, input=np.ones((48, 3, 16, 16), np.float32))
    proc = subprocess.run([sys.executable, "-m", "onnx_tailor", "evaluate", str(run["source"]), "--data", str(other),
                           "--recipe", str(run["paths"]["recipe.json"]), "--split", "test"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "differs from the data the recipe was made with" in proc.stderr


# -- section 3: a terminal table a person can read ---------------------------------------------------------


def test_the_step_table_shows_whole_names_and_parameters(run):
    out, report = run["result"].stdout, run["report"]
    header = next(line for line in out.splitlines() if "rewrite: pass at site" in line)
    assert "predicted ms" in header and "cosine (sel.)" in header and "local err" in header
    flat = " ".join(out.split())  # wrapped lines joined
    for step in report["steps"]:
        assert f"{step['pass']} at {step['anchor']}" in flat
        assert " ".join(f"{k}={v}" for k, v in step["params"].items()) in flat
        assert step["change"] and step["change"] in flat  # what the step did there


def test_long_names_wrap_instead_of_being_cut():
    anchor = "/blocks/blocks.8/body/body.0/Conv"
    steps = [{"pass": "scale_depth", "anchor": anchor, "params": {"alpha": a, "importance": "greedy", "multiple": 32,
                                                                   "refit": "lstsq", "ridge": 0.001},
              "predicted_latency_ms": 0.08, "metric": None, "local_error": 0.1,
              "change": f"expansion {w} -> {w - 32} channels"} for a, w in ((0.5, 176), (0.75, 176), (0.75, 144))]
    report = {"target": "npu-p32", "search": "greedy", "speedup_predicted": 2.0, "steps": steps, "blocks": [],
              "original": {"predicted_latency_ms": 0.2, "param_bytes": 100, "peak_activation_bytes": 10, "macs": 10},
              "optimized": {"predicted_latency_ms": 0.1, "param_bytes": 320, "peak_activation_bytes": 10, "macs": 36},
              "statistics": {"candidates_scored": 1, "candidates_applied": 1, "candidates_evaluated": 1, "seconds": 1},
              "notes": []}
    text = format_report(report, width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    flat = " ".join(text.split())
    assert anchor in text  # never cut
    assert f"scale_depth at {anchor} [alpha=0.5" in flat and "alpha=0.75" in flat
    assert "expansion 176 -> 144 channels" in text and "expansion 144 -> 112 channels" in text  # the same step twice
    assert "faster but larger: parameters 3.20x, MACs 3.60x, for 2.00x the predicted speed" in text
    assert faster_but_larger({**report, "optimized": {**report["optimized"], "param_bytes": 90, "macs": 9}}) is None


def test_the_block_table_has_headers_and_the_models_names(run):
    lines = run["result"].stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["block", "input"])
    assert "channels in/exp/out" in lines[header] and "decision" in lines[header] and "why" in lines[header]
    for name, line in zip(run["names"], lines[header + 1:]):
        assert line.split()[0] == name


def test_progress_shows_elapsed_time_and_verbose_detail_and_the_log_keeps_it(run):
    stderr = run["result"].stderr.splitlines()
    assert stderr and all(line.startswith("[optimize ") and " s] " in line for line in stderr)
    assert any("candidate " in line for line in stderr)  # -v
    log = run["paths"]["log.txt"].read_text()
    assert "DEBUG candidate " in log and "INFO budget: cosine" in log


def test_quiet_prints_no_progress_and_the_time_budget_is_counted_down(run, tmp_path):
    result = invoke("optimize", run["source"], "--passes", "pad_channels", "--quiet", "-o", tmp_path / "q.onnx")
    assert result.exit_code == 0 and result.stderr == ""
    result = invoke("optimize", run["source"], "--data", run["data"], "--metric", "cosine", "--passes",
                    "fuse_ibn_expansion", "--time-budget", "600", "-o", tmp_path / "t.onnx")
    assert result.exit_code == 0, result.output
    assert "budget: the search stops after 600 s" in result.stderr
    assert "s of the time budget left)" in result.stderr


def test_ctrl_c_writes_the_best_so_far_and_exits_130(run, tmp_path, interrupt_search):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = invoke("optimize", run["source"], "--data", run["data"], "--metric", "cosine", "--max-drop", "0.05",
                    "--passes", PASSES, "-o", out, "--report", report, "--quiet")
    assert result.exit_code == 130
    written = json.loads(report.read_text())
    assert out.exists() and written["interrupted"] is True and written["improved"] is True
    assert "stopped early: interrupted (Ctrl-C)" in result.stdout
