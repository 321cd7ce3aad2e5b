"""One line for every mistake a user can make (issue 12 §2, §3): each case builds the bad input, runs the
command, and checks the exit code, that stderr is one `error:` line with no traceback, and what is left
on disk (no output, no temporary litter, every input file as it was)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_tailor import api
from onnx_tailor.cli import main
from onnx_tailor.costmodel import measure
from onnx_tailor.costmodel.target import TargetError, load_target
from onnx_tailor.ir import io
from onnx_tailor.passes.canonicalize import load
from onnx_tailor.search.report import decimals, format_report
from tests.conftest import DIGITS, MODELS
from tests.graphs import tiny_mobilenet

DATA = MODELS / "digits_eval.npz"


def run_cli(*args) -> "CliResult":
    result = CliRunner().invoke(main, [str(a) for a in args])
    return CliResult(result.exit_code, result.stdout, result.stderr, result.exception)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(result: CliResult, code: int, message: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert message in lines[0], lines[0]


# -- the bad inputs ---------------------------------------------------------------------------


def dynamic_tiny(folder: Path) -> Path:
    """tiny_mobilenet with a free height and width, so that --input-shape may ask for any size."""
    proto = tiny_mobilenet()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    del proto.graph.value_info[:]
    for output in proto.graph.output:
        for dim in output.type.tensor_type.shape.dim:
            dim.dim_param = "n"
    path = folder / "dynamic.onnx"
    onnx.save(proto, str(path))
    return path


def external(folder: Path, location: str) -> Path:
    """The digits model with its weights in external data at `location` (relative to the model)."""
    proto = onnx.load(str(DIGITS.path))
    (folder / "sub").mkdir()
    onnx.external_data_helper.convert_model_to_external_data(proto, location="w.data", size_threshold=1024)
    onnx.save(proto, str(folder / "sub" / "model.onnx"))
    (folder / "w.data").write_bytes((folder / "sub" / "w.data").read_bytes())  # where '../w.data' points
    proto = onnx.load(str(folder / "sub" / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = folder / "sub" / "pointing.onnx"
    onnx.save(proto, str(path))
    return path


def recipe(folder: Path, **changes) -> Path:
    """A valid recipe for the digits model (one pad_channels step), with top-level or nested fields changed."""
    raw = {"format": "onnx-tailor-recipe/1", "source_model_hash": load(DIGITS.path).content_hash,
           "target": "npu-p32", "input_shapes": {"input": [1, 1, 32, 32]},
           "calibration": {"fingerprint": None, "source": str(DATA), "seed": 0, "fraction": 0.3},
           "steps": [{"pass": "pad_channels", "anchor": "/stem/stem.0/Conv", "params": {"multiple": 32}}]}
    for key, value in changes.items():
        where, _, inner = key.partition("__")
        if inner:
            target = raw[where] if where != "step" else raw["steps"][0]
            target[inner] = value
        else:
            raw[where] = value
    path = folder / "recipe.json"
    path.write_text(json.dumps(raw))
    return path


def profile(folder: Path, base: str, **changes) -> Path:
    raw = json.loads(Path(load_target(base).source).read_text())
    raw.pop("measurements")
    raw.update(changes)
    path = folder / "profile.json"
    # json.dumps writes NaN and Infinity, which Python's reader takes back; 1e400 must be written by hand
    path.write_text(json.dumps(raw).replace('"__1e400__"', "1e400"))
    return path


def no_input_model(folder: Path) -> Path:
    weight = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    constant = onnx.numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["c", "w"], ["m"], name="mm"), onnx.helper.make_node("Relu", ["m"], ["y"])],
        "constant", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight, constant])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = folder / "constant.onnx"
    onnx.save(proto, str(path))
    return path


def labels_npz(folder: Path, labels: np.ndarray) -> Path:
    with np.load(DATA) as archive:
        inputs = archive["input"]
    path = folder / "labels.npz"
    np.savez(path, input=inputs, labels=labels)
    return path


def huge_npz(folder: Path) -> Path:
    """An .npz whose one member declares 381 GiB in its header and holds 100 bytes."""
    header = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**8, 1, 32, 32)})
    path = folder / "huge.npz"
    with __import__("zipfile").ZipFile(path, "w") as archive:
        archive.writestr("input.npy", header.getvalue() + bytes(100))
    return path


def image_folder(folder: Path, size: int) -> Path:
    from PIL import Image  # Pillow is the optional extra image folders need
    (folder / "images" / "a").mkdir(parents=True)
    Image.new("L", (size, size)).save(folder / "images" / "a" / "one.png")
    return folder / "images"


def plugin(folder: Path) -> str:
    (folder / "tailor_exiting_metric.py").write_text(
        "import sys\n\ndef score(outputs, dataset, reference):\n    sys.exit(0)\n")
    return "tailor_exiting_metric:score"


def broken_digits(folder: Path, how: str) -> Path:
    """The digits model broken as the fuzz (tests/test_fuzz.py) first found it broken."""
    proto = onnx.load(str(DIGITS.path))
    if how == "initializer":
        tensor = next(t for t in proto.graph.initializer if list(t.dims) == [12])
        tensor.dims[0] = 7
    elif how == "empty_pads":
        attribute = next(a for n in proto.graph.node for a in n.attribute if a.name == "pads")
        del attribute.ints[:]
    elif how == "output_is_input":
        proto.graph.output[0].name = proto.graph.input[0].name
    elif how == "constant_without_value":
        constant = next(n for n in proto.graph.node if n.op_type == "Constant")
        del constant.attribute[:]
    elif how == "unknown_type":
        proto.graph.initializer[0].data_type = 99
    elif how == "unknown_input_type":
        proto.graph.input[0].type.tensor_type.elem_type = 99
    elif how == "bfloat16_input":  # cast to float at once: the Conv takes no bfloat16
        name = proto.graph.input[0].name
        proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.BFLOAT16
        for node in proto.graph.node:
            node.input[:] = [f"{name}_float" if i == name else i for i in node.input]
        proto.graph.node.insert(0, onnx.helper.make_node("Cast", [name], [f"{name}_float"], name="cast_input",
                                                         to=onnx.TensorProto.FLOAT))
    elif how == "batch_fixed_huge":
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 10**9
    elif how.startswith("rewired_"):  # a node fed another layer's tensor, which the folds at load read
        node_index, input_index, tensor = {"rewired_conv": (5, 1, "stem.0.weight"),
                                           "rewired_batchnorm": (1, 1, "blocks.0.body.1.weight"),
                                           "rewired_conv_rank": (0, 1, "stem.1.weight"),
                                           "rewired_conv_bias": (0, 2, "blocks.0.body.1.bias")}[how]
        node = proto.graph.node[node_index]
        if input_index == len(node.input):
            node.input.append(tensor)
        node.input[input_index] = tensor
    data = proto.SerializeToString()
    if how == "not_utf8":  # protobuf will not set such a name: change its bytes in place, same length
        name = proto.graph.node[0].name.encode()
        field = b"\x1a" + bytes([len(name)]) + name  # NodeProto.name: field 3, length-delimited
        data = data.replace(field, field[:2] + b"\xbc" + name[1:], 1)
    path = folder / f"{how}.onnx"
    path.write_bytes(data)
    return path


# (id, how to build the command's arguments in tmp_path, exit code, a phrase of the message)
CASES: list[tuple[str, Callable[[Path], list], int, str]] = [
    ("max-drop-nan", lambda d: ["optimize", DIGITS.path, "--data", DATA, "--max-drop", "nan", "-o", d / "out.onnx"],
     2, "must be a finite number of points or a percentage, got nan"),
    ("max-drop-inf-percent", lambda d: ["optimize", DIGITS.path, "--data", DATA, "--max-drop", "inf%", "-o",
                                        d / "out.onnx"], 2, "must be a finite number of points or a percentage"),
    ("evaluate-ci-width-nan", lambda d: ["evaluate", DIGITS.path, "--data", DATA, "--ci-width", "nan"],
     2, "'nan' is not a finite number"),
    ("time-budget-nan", lambda d: ["optimize", DIGITS.path, "--time-budget", "nan", "-o", d / "out.onnx"],
     2, "'nan' is not a finite number"),
    ("seed-negative", lambda d: ["optimize", DIGITS.path, "--data", DATA, "--seed", "-1", "-o", d / "out.onnx"],
     2, "Invalid value for '--seed'"),
    ("evaluate-seed-negative", lambda d: ["evaluate", DIGITS.path, "--data", "random", "--seed", "-1"],
     2, "Invalid value for '--seed'"),
    ("missing-option", lambda d: ["optimize", DIGITS.path], 2, "Missing option '-o'"),
    ("beam-width-huge", lambda d: ["optimize", DIGITS.path, "--search", "evolutionary", "--beam-width", "1000000000",
                                   "-o", d / "out.onnx"], 2, "Invalid value for '--beam-width'"),
    ("sweep-size-huge", lambda d: ["costmodel", "sweep", "--size", "1000000000", "-o", d / "sweep"], 2,
     "Invalid value for '--size'"),
    ("external-data-outside", lambda d: ["inspect", external(d, "../w.data")], 1, "points outside the directory"),
    ("external-data-absolute", lambda d: ["inspect", external(d, str(d / "w.data"))], 1, "absolute path"),
    ("external-data-missing", lambda d: ["apply", external(d, "gone.data"), "--pass", "simplify", "-o",
                                         d / "out.onnx"], 1, "gone.data, but it is not regular file"),
    ("seeded-input-too-big", lambda d: ["apply", dynamic_tiny(d), "--pass", "densify_depthwise", "--input-shape",
                                        "input=1,3,31623,31623", "-o", d / "out.onnx"],
     1, "seeded inputs for 'input' [1, 3, 31623, 31623] would take 11.2 GiB"),
    ("param-multiple-huge", lambda d: ["apply", DIGITS.path, "--pass", "pad_channels", "--param",
                                       "multiple=1000000000", "-o", d / "out.onnx"],
     1, "multiple must be in [2, 4096], got 1000000000"),
    ("param-not-finite", lambda d: ["apply", DIGITS.path, "--pass", "align_channels", "--param", "ridge=inf",
                                    "-o", d / "out.onnx"], 1, "ridge must be a finite number"),
    ("recipe-params-list", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, step__params=[1, 2]),
                                      "-o", d / "out.onnx"], 1, "'steps[0].params' must be an object"),
    ("recipe-param-infinite", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, step__params={"multiple": math.inf}),
                                         "-o", d / "out.onnx"], 1, "parameter 'multiple' needs a int, got 'inf'"),
    ("recipe-param-fraction", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, step__params={"multiple": 16.5}),
                                         "-o", d / "out.onnx"], 1, "parameter 'multiple' needs a int, got '16.5'"),
    ("recipe-shapes-string", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, input_shapes="1,1,32,32"),
                                        "-o", d / "out.onnx"], 1, "'input_shapes' must be an object"),
    ("recipe-dims-negative", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, input_shapes={"input": [1, -1]}),
                                        "-o", d / "out.onnx"], 1, "'input_shapes.input' must be a list of positive"),
    ("recipe-seed-string", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, calibration__seed="zero"),
                                      "-o", d / "out.onnx"], 1, "'calibration.seed' must be an integer"),
    ("recipe-steps-object", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, steps={"a": 1}),
                                       "-o", d / "out.onnx"], 1, "'steps' must be a list"),
    ("recipe-hash-number", lambda d: ["apply", DIGITS.path, "--recipe", recipe(d, source_model_hash=5),
                                      "-o", d / "out.onnx"], 1, "'source_model_hash' must be a string"),
    ("profile-nan", lambda d: ["simulate", DIGITS.path, "--target", profile(d, "npu-p32", clock_hz=math.nan)],
     1, "'clock_hz' must be a finite number, got nan"),
    ("profile-1e400", lambda d: ["simulate", DIGITS.path, "--target", profile(d, "npu-p32", sram_bytes="__1e400__")],
     1, "'sram_bytes' must be a finite number, got inf"),
    ("profile-fractional", lambda d: ["simulate", DIGITS.path, "--target", profile(d, "npu-p32", parallelism=16.5)],
     1, "'parallelism' must be a whole number, got 16.5"),
    ("profile-string-for-list", lambda d: ["simulate", DIGITS.path, "--target",
                                           profile(d, "npu-p32", fusable_activations="relu")],
     1, "'fusable_activations' must be a list of strings"),
    ("profile-threads", lambda d: ["costmodel", "measure", "--target", profile(d, "cpu-ort", threads=100000),
                                   "--size", "10", "-o", d / "out.csv"], 1, "'threads' must be from 1 to 1024"),
    ("profile-provider-absent", lambda d: ["costmodel", "measure", "--target",
                                           profile(d, "cpu-ort", execution_provider="NoSuchExecutionProvider"),
                                           "--size", "10", "-o", d / "out.csv"],
     1, "execution provider NoSuchExecutionProvider is not in this onnxruntime"),
    ("image-bomb", lambda d: ["evaluate", DIGITS.path, "--data", image_folder(d, 9000)], 1,
     "9000x9000 pixels, more than the 67,108,864"),
    ("image-spec-size", lambda d: ["evaluate", DIGITS.path, "--data", image_folder(d, 8), "--image-spec",
                                   '{"size": [100000, 100000]}'], 1, "take 37.3 GiB as float32"),
    ("no-inputs", lambda d: ["optimize", no_input_model(d), "-o", d / "out.onnx"], 1, "the model has no inputs"),
    ("labels-past-int64", lambda d: ["evaluate", DIGITS.path, "--data",
                                     labels_npz(d, np.full(360, 2**63 + 5, dtype=np.uint64))],
     1, "labels include 9223372036854775813"),
    ("npz-declares-too-much", lambda d: ["evaluate", DIGITS.path, "--data", huge_npz(d)], 1,
     "its arrays declare 381.5 GiB"),
    ("name-not-utf8", lambda d: ["inspect", broken_digits(d, "not_utf8")], 1, "is not UTF-8"),
    ("initializer-short", lambda d: ["inspect", broken_digits(d, "initializer")], 1, "has dims [7] but holds 12 values"),
    ("initializer-type-unknown", lambda d: ["inspect", broken_digits(d, "unknown_type")], 1,
     "has no known element type (99)"),
    ("input-type-unknown", lambda d: ["inspect", broken_digits(d, "unknown_input_type")], 1,
     "'input' has no known element type (99)"),
    ("constant-without-value", lambda d: ["apply", broken_digits(d, "constant_without_value"), "--pass",
                                          "simplify", "-o", d / "out.onnx"], 1,
     "node '/stem/stem.2/Constant' (Constant): One and only one of the attributes 'value'"),
    ("attribute-empty-list", lambda d: ["inspect", broken_digits(d, "empty_pads")], 1,
     "attribute 'pads' is an empty list"),
    ("no-kernel-runs", lambda d: ["optimize", broken_digits(d, "output_is_input"), "--passes", "simplify", "--quiet", "-o",
                                  d / "out.onnx"], 1, "the model runs no kernel"),
    ("conv-given-another-weight", lambda d: ["apply", broken_digits(d, "rewired_conv"), "--pass",
                                             "densify_depthwise", "-o", d / "out.onnx"],
     1, "its shapes do not agree: node '/blocks/blocks.0/body/body.1/BatchNormalization' (BatchNormalization): "
        "Dimension mismatch"),
    ("batchnorm-given-another-scale", lambda d: ["evaluate", broken_digits(d, "rewired_batchnorm"), "--data", "random",
                                                 "--samples", "4", "--reference", DIGITS.path], 1,
     "Dimension mismatch in unification between 36 and 12"),
    ("conv-weight-of-rank-1", lambda d: ["inspect", broken_digits(d, "rewired_conv_rank")], 1,
     "Conv '/stem/stem.0/Conv' has a weight of shape [12]; a Conv weight has at least 3 dims"),
    ("conv-bias-of-another-length", lambda d: ["inspect", broken_digits(d, "rewired_conv_bias")], 1,
     "Conv '/stem/stem.0/Conv' has a bias of shape [36] for 12 output channels"),
    ("fixed-batch-huge", lambda d: ["evaluate", broken_digits(d, "batch_fixed_huge"), "--data", "random", "--quiet",
                                    "--samples", "4", "--reference", DIGITS.path], 1,
     "the model fixes its batch at 1,000,000,000 samples: padding 'input' to one batch would take 3,814.7 GiB"),
    ("input-type-without-seeded-values", lambda d: ["apply", broken_digits(d, "bfloat16_input"), "--pass",
                                                    "densify_depthwise", "-o", d / "out.onnx"],
     1, "no random input generator for element type BFLOAT16 of 'input'"),
]


@pytest.mark.parametrize("build,code,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_error(tmp_path, monkeypatch, build, code, message):
    monkeypatch.chdir(tmp_path)
    args = build(tmp_path)
    before = snapshot(tmp_path)
    result = run_cli(*args)
    assert_one_line_error(result, code, message)
    assert snapshot(tmp_path) == before  # no output, no temporary litter, every input file as it was


def test_plugin_that_exits_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_cli("evaluate", DIGITS.path, "--data", DATA, "--metric", spec, "--quiet")  # no progress line
    assert_one_line_error(result, 1, f"metric plug-in '{spec}' called sys.exit(0)")
    assert result.stdout == ""


def test_help_says_a_plugin_runs_code():
    shown = " ".join(run_cli("evaluate", "--help").stdout.split())  # as read, whatever the wrapping
    assert "or else the current directory, which runs the module's code" in shown


def test_model_from_an_endless_device_is_refused(monkeypatch):
    monkeypatch.setattr(io, "STREAM_LIMIT", 1 << 20)  # /dev/zero never ends; the limit only says when to stop
    result = run_cli("inspect", "/dev/zero")
    assert_one_line_error(result, 1, "/dev/zero: is not a regular file and holds more than 1 MiB")


@pytest.mark.parametrize("code,strerror", [(errno.EROFS, "Read-only file system"),
                                           (errno.EACCES, "Permission denied"),
                                           (errno.ENOSPC, "No space left on device")])
def test_a_refusing_disk_is_one_line(tmp_path, monkeypatch, code, strerror):
    # Root writes into read-only folders, and a full disk cannot be made here: the write fails as the OS would.
    def refuse(model, path, **kwargs):
        raise OSError(code, strerror, str(path))

    monkeypatch.setattr(api, "save", refuse)
    out = tmp_path / "out.onnx"
    result = run_cli("apply", DIGITS.path, "--pass", "fold_batchnorm", "-o", out)
    assert_one_line_error(result, 1, f"{out}: {strerror}")
    assert not out.exists()


def test_a_failing_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only what the user can fix is one line: any other error stays a traceback, to be reported."""
    def broken(model, path, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(api, "save", broken)
    result = CliRunner().invoke(main, ["apply", str(DIGITS.path), "--pass", "fold_batchnorm", "-o",
                                       str(tmp_path / "o.onnx")])
    assert isinstance(result.exception, OSError)


@pytest.mark.parametrize("budget", ["0", "0%"])
def test_zero_budget_tries_exact_rewrites_only(tmp_path, budget):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = run_cli("optimize", DIGITS.path, "--data", DATA, "--max-drop", budget, "--passes",
                     "pad_channels,align_channels", "--quiet", "-o", out, "--report", report)
    assert result.code == 0, result.stderr
    written = json.loads(report.read_text())
    assert "--max-drop 0: only exact rewrites were tried" in written["notes"]
    assert all(step["pass"] == "pad_channels" for step in written["steps"])
    assert out.exists()


def test_fit_does_not_overwrite_another_csv(tmp_path):
    measurements = tmp_path / "m.csv"
    measurements.write_text(Path(load_target("npu-p16").measurements_path()).read_text())
    theirs = tmp_path / "mydev.csv"
    theirs.write_text("id,latency_s\n\"someone else's\",1\n")
    before = snapshot(tmp_path)
    result = run_cli("costmodel", "fit", "--target", "npu-p16", "--measurements", measurements, "--name", "mydev",
                     "-o", tmp_path / "mydev.json")
    assert_one_line_error(result, 1, f"{theirs} exists and holds other measurements")
    assert snapshot(tmp_path) == before


def test_measuring_refuses_a_provider_that_fell_back(monkeypatch):
    """onnxruntime only warns when a provider cannot start and runs on the CPU: no CSV may record that."""
    real = measure.ort.InferenceSession

    class FellBack(real):
        def __init__(self, model, options, providers, **kwargs):
            super().__init__(model, options, providers=["CPUExecutionProvider"], **kwargs)

    model, target = load(DIGITS.path), load_target("cpu-ort")
    monkeypatch.setattr(measure.ort, "get_available_providers", lambda: ["FakeExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(measure.ort, "InferenceSession", FellBack)
    fake = dataclasses.replace(target, execution_provider="FakeExecutionProvider")
    with pytest.raises(TargetError, match="could not start FakeExecutionProvider and fell back to CPUExecutionProvider"):
        measure.measure_model(model, fake)


def test_summary_never_rounds_a_change_away():
    assert decimals((1.0, 0.9979), (0.0021, 0.0)) == 3  # 1.00 -> 1.00 (drop 0.00) was printed before
    assert decimals((98.41, 97.62), (0.79, 0.0)) == 2  # two places show every change of a top1 in points
    assert decimals((1.0, 1.0), (0.0, 0.0)) == 2  # no change: nothing to show
    report = {"target": "t", "search": "greedy", "speedup_predicted": 1.0, "steps": [], "blocks": [], "notes": [],
              "statistics": {"candidates_scored": 0, "candidates_applied": 0, "candidates_evaluated": 0,
                             "seconds": 0.0},
              "original": {"predicted_latency_ms": 1.0, "param_bytes": 1, "peak_activation_bytes": 1,
                           "metric": {"value": 1.0, "n": 10}},
              "optimized": {"predicted_latency_ms": 1.0, "param_bytes": 1, "peak_activation_bytes": 1,
                            "metric": {"value": 0.9979, "n": 10}, "drop": 0.0021},
              "test": {"original": {"name": "cosine", "value": 1.0}, "optimized": {"value": 0.9979}, "drop": 0.0021,
                       "drop_ci": None, "allowed_drop": 0.01, "precision": "fp32", "n": 10}}
    shown = format_report(report)
    assert "1.000 -> 0.998 (drop 0.002; budget 0.010)" in shown and "(drop 0.002)" in shown
