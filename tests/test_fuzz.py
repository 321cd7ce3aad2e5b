"""A seeded mutation fuzz of the command line (issue 12 §4): broken inputs get one line, never a traceback.

Each case takes one valid input (the bundled model, a slice of its data, a recipe, a target profile),
breaks it one seeded way (protobuf fields, dims, attributes, initializers, truncated or flipped bytes; npz
dtypes, shapes, values, labels, headers; recipe and profile fields of another type or range), and runs
one command on it in-process (inspect, apply, evaluate, a short optimize, simulate, cost). A case fails
on a traceback, an exit code other than 0-4, a message saying memory ran out (sizes are to be checked
before allocating), or any change to an input file.

The loop runs in a child process under a memory limit, so that a case that would exhaust the machine
fails alone. The cases are the same for a seed; the test runs the first CASES of them, fewer on a machine
too slow to finish them in SECONDS (about 210 on two busy cores). `python -m tests.test_fuzz FOLDER [--seed S]
[--seconds T] [--cases N] [--first F]` runs it by hand and prints every finding as it is found; `--first N
--cases N+1` replays case N alone.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from onnx_tailor.passes.canonicalize import load

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "digits_mbv2.onnx"
DATA = REPO / "models" / "digits_eval.npz"
PROFILES = REPO / "onnx_tailor" / "costmodel" / "targets"
SECONDS = 60
# The cases the test runs, at most: the same ones on every machine (a slow one runs fewer within SECONDS).
# Past this count the loop is for finding more, by hand: python -m tests.test_fuzz FOLDER --seed 1 --cases 2500.
# Seeds 0-3 ran 2500 cases each; what they found (a Conv given another layer's weight, a fixed batch of
# 10**9, an integer parameter of 1e400 in a recipe) is fixed, each with its case in tests/test_cli_errors.py.
CASES = 400
MEMORY_LIMIT = 8 << 30  # address space of the child: past it numpy and onnxruntime fail instead of the machine
ODD_INTS = [0, -1, 1, 3, 7, 2**31 - 1, -2**31, 10**9, 2**40]
ODD_JSON = [None, True, False, 0, -1, 0.5, 16.5, 1e308, -1e308, "", "x", "relu", [], [1, 2], ["a"], {}, {"a": 1},
            2**63 + 5, "NaN"]


# -- the model ---------------------------------------------------------------------------------


def _value_infos(graph: onnx.GraphProto) -> list:
    return [vi for vi in list(graph.input) + list(graph.output) + list(graph.value_info)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")]


def mutate_model(rng: random.Random, proto: onnx.ModelProto) -> tuple[bytes, str]:
    """The bundled model broken one way: its bytes and what was done."""
    proto = copy.deepcopy(proto)
    graph = proto.graph
    node = rng.choice(graph.node)
    kind = rng.choice(["dim", "dim", "attribute", "attribute", "drop_attribute", "op_type", "node_input",
                       "drop_node", "initializer_dims", "initializer_data", "initializer_type", "opset",
                       "ir_version", "input_type", "output_name", "external", "truncate", "flip"])
    if kind == "dim":
        vi = rng.choice(_value_infos(graph))
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dim = rng.choice(dims)
            choice = rng.choice(ODD_INTS + ["param", "clear"])
            if choice == "param":
                dim.dim_param = "q"
            elif choice == "clear":
                vi.type.tensor_type.ClearField("shape")
            else:
                dim.dim_value = choice
        what = f"dim of {vi.name}"
    elif kind == "attribute" and node.attribute:
        attr = rng.choice(node.attribute)
        if attr.type == onnx.AttributeProto.INT:
            attr.i = rng.choice(ODD_INTS)
        elif attr.type == onnx.AttributeProto.INTS:
            values = list(attr.ints)
            if values and rng.random() < 0.7:
                values[rng.randrange(len(values))] = rng.choice(ODD_INTS)
            else:
                values = values[:rng.randrange(len(values) + 1)]
            del attr.ints[:]
            attr.ints.extend(values)
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = rng.choice([math.nan, math.inf, -1.0, 1e30])
        else:
            attr.type = onnx.AttributeProto.INT
            attr.i = rng.choice(ODD_INTS)
        what = f"attribute {attr.name} of {node.name}"
    elif kind == "drop_attribute" and node.attribute:
        del node.attribute[rng.randrange(len(node.attribute))]
        what = f"dropped an attribute of {node.name}"
    elif kind == "op_type":
        node.op_type = rng.choice(["Relu", "Conv", "MatMul", "Add", "NoSuchOp", "", "Loop", "Reshape"])
        what = f"op_type of {node.name} -> {node.op_type}"
    elif kind == "node_input" and node.input:
        index = rng.randrange(len(node.input))
        node.input[index] = rng.choice(["missing", "", graph.input[0].name, graph.output[0].name,
                                        rng.choice(graph.initializer).name])
        what = f"input {index} of {node.name}"
    elif kind == "drop_node":
        graph.node.remove(node)
        what = f"dropped {node.name}"
    elif kind.startswith("initializer"):
        tensor = rng.choice(graph.initializer)
        if kind == "initializer_dims" and tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(ODD_INTS)
        elif kind == "initializer_data":
            raw = onnx.numpy_helper.to_array(tensor).tobytes()
            tensor.ClearField("float_data")
            tensor.raw_data = raw[:rng.randrange(len(raw) + 1)]
        else:
            tensor.data_type = rng.choice([0, onnx.TensorProto.INT64, onnx.TensorProto.STRING,
                                           onnx.TensorProto.FLOAT16, onnx.TensorProto.BOOL, 99])
        what = f"{kind} of {tensor.name}"
    elif kind == "opset":
        proto.opset_import[0].version = rng.choice([0, 1, 10, 11, 13, 99])
        what = f"opset {proto.opset_import[0].version}"
    elif kind == "ir_version":
        proto.ir_version = rng.choice([0, 1, 3, 99])
        what = f"ir_version {proto.ir_version}"
    elif kind == "input_type":
        graph.input[0].type.tensor_type.elem_type = rng.choice([0, 7, 8, 9, 10, 11, 16, 2, 99])
        what = f"input type {graph.input[0].type.tensor_type.elem_type}"
    elif kind == "output_name":
        graph.output[0].name = rng.choice(["missing", graph.input[0].name, graph.initializer[0].name])
        what = f"output name -> {graph.output[0].name}"
    elif kind == "external":
        tensor = rng.choice([t for t in graph.initializer if len(t.raw_data) > 64] or list(graph.initializer))
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=rng.choice(["../x.bin", "/etc/hostname", "missing.bin",
                                                                   "", "."]))
        if rng.random() < 0.5:
            tensor.external_data.add(key="length", value=str(rng.choice(ODD_INTS)))
        what = f"external data for {tensor.name}"
    else:
        data = bytearray(proto.SerializeToString())
        if kind == "truncate":
            return bytes(data[:rng.randrange(len(data))]), "truncated"
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "flipped bytes"
    return proto.SerializeToString(), what


def model_commands(rng: random.Random, path: Path, work: Path) -> list[str]:
    return rng.choice([
        ["inspect", path],
        ["apply", path, "--pass", rng.choice(["simplify", "fold_batchnorm", "pad_channels", "densify_depthwise"]),
         "-o", work / "out.onnx"],
        ["evaluate", path, "--data", "random", "--samples", "4", "--metric", "cosine", "--reference", MODEL],
        ["optimize", path, "--passes", "simplify", "--quiet", "--time-budget", "1", "-o", work / "out.onnx"],
    ])


# -- the data ----------------------------------------------------------------------------------


def mutate_data(rng: random.Random, arrays: dict[str, np.ndarray], path: Path) -> str:
    """Write a broken copy of `arrays` (input, labels) to `path`; returns what was done."""
    arrays = {k: v.copy() for k, v in arrays.items()}
    kind = rng.choice(["dtype", "shape", "values", "labels", "labels", "keys", "empty", "truncate", "flip",
                       "text", "object", "header"])
    if kind == "dtype":
        dtype = rng.choice([np.float64, np.float16, np.int32, np.uint8, np.bool_, np.complex64, "<U3"])
        arrays["input"] = arrays["input"].astype(dtype)
    elif kind == "shape":
        x = arrays["input"]
        arrays["input"] = rng.choice([x[:, 0], x[..., None], x.transpose(0, 2, 3, 1), x[:, :, :16, :16],
                                      x[:0], x.reshape(len(x), -1), x[:5]])
    elif kind == "values":
        arrays["input"].flat[rng.randrange(arrays["input"].size)] = rng.choice([np.nan, np.inf, -np.inf, 1e38])
    elif kind == "labels":
        labels = arrays["labels"]
        arrays["labels"] = rng.choice([labels.astype(np.float32) + 0.5, -labels - 1, labels[:5], labels[:, None],
                                       np.full(len(labels), 2**63 + 5, np.uint64), labels.astype(str),
                                       np.full(len(labels), 10**12)])
    elif kind == "keys":
        choice = rng.choice(["rename", "extra", "drop"])
        if choice == "rename":
            arrays["x"] = arrays.pop("input")
        elif choice == "extra":
            arrays["extra"] = np.zeros(3)
        else:
            arrays.pop("input")
    elif kind == "empty":
        arrays = {}
    if kind == "object":
        np.savez(path, input=np.array([None, 1], dtype=object), allow_pickle=True)  # must never be unpickled
        return "object array"
    if kind == "header":
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (rng.choice([10**8, 10**12, 2**62]), 1, 32, 32)})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("input.npy", header.getvalue() + bytes(64))
        return "npz header declaring a huge array"
    np.savez(path, **arrays)
    if kind in ("truncate", "flip", "text"):
        data = bytearray(path.read_bytes())
        if kind == "truncate":
            data = data[:rng.randrange(len(data))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = bytearray(b"not an archive")
        path.write_bytes(bytes(data))
    return f"data {kind}"


def data_commands(rng: random.Random, path: Path, work: Path) -> list[str]:
    return rng.choice([
        ["evaluate", MODEL, "--data", path],
        ["apply", MODEL, "--pass", "factor_low_rank", "--data", path, "-o", work / "out.onnx"],
        ["optimize", MODEL, "--data", path, "--passes", "simplify", "--precision", "fp32", "--quiet",
         "--time-budget", "1", "-o", work / "out.onnx"],
    ])


# -- recipes and profiles: JSON ------------------------------------------------------------------


def _paths(value, prefix=()):
    """Every (path of keys and indices) inside a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _paths(inner, prefix + (index,))


def mutate_json(rng: random.Random, value: dict) -> str:
    """`value` with one field replaced, dropped or added, as JSON text (sometimes truncated)."""
    value = copy.deepcopy(value)
    paths = [p for p in _paths(value) if p]
    where = rng.choice(paths)
    parent = value
    for key in where[:-1]:
        parent = parent[key]
    action = rng.choice(["replace", "replace", "replace", "drop", "add", "truncate"])
    if action == "replace":
        parent[where[-1]] = rng.choice(ODD_JSON + [math.nan, math.inf])
    elif action == "drop":
        del parent[where[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent["unknown_field"] = 1
    text = json.dumps(value).replace("Infinity", rng.choice(["Infinity", "1e400"]))
    if action == "truncate":
        text = text[:rng.randrange(len(text))]
    return text


def recipe_for_model() -> dict:
    return {"format": "onnx-tailor-recipe/1", "source_model_hash": load(MODEL).content_hash, "target": "npu-p32",
            "input_shapes": {"input": [1, 1, 32, 32]},
            "calibration": {"fingerprint": None, "source": str(DATA), "seed": 0, "fraction": 0.3,
                            "split": [0.3, 0.35, 0.35]},
            "steps": [{"pass": "pad_channels", "anchor": "/stem/stem.0/Conv", "params": {"multiple": 32}}]}


def profile_commands(rng: random.Random, path: Path, work: Path) -> list[str]:
    return rng.choice([["simulate", MODEL, "--target", path], ["cost", MODEL, "--target", path],
                       ["costmodel", "measure", "--target", path, "--size", "10", "-o", work / "m.csv"]])


# -- the loop ------------------------------------------------------------------------------------


def _digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}


def run_case(rng: random.Random, index: int, work: Path, originals: dict) -> tuple[str, list, str | None]:
    """(what was broken, the command, a finding or None) of case `index`."""
    case = work / f"case{index}"
    case.mkdir()
    family = rng.choice(["model", "model", "model", "data", "recipe", "profile"])
    if family == "model":
        data, what = mutate_model(rng, originals["model"])
        path = case / "model.onnx"
        path.write_bytes(data)
        args = model_commands(rng, path, case)
    elif family == "data":
        path = case / "data.npz"
        what = mutate_data(rng, originals["data"], path)
        args = data_commands(rng, path, case)
    elif family == "recipe":
        path = case / "recipe.json"
        path.write_text(mutate_json(rng, originals["recipe"]))
        what = "recipe"
        args = ["apply", MODEL, "--recipe", path, "-o", case / "out.onnx"]
    else:
        base = rng.choice(["npu-p32", "cpu-ort"])
        raw = dict(originals["profiles"][base])
        raw.pop("measurements")
        path = case / "profile.json"
        path.write_text(mutate_json(rng, raw))
        what = f"profile {base}"
        args = profile_commands(rng, path, case)
    inputs = [path, MODEL, DATA]
    before = _digest(inputs)
    args = [str(a) for a in args]
    result = CliRunner().invoke(main, args)
    finding = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        finding = f"traceback: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    elif result.exit_code not in (0, 1, 2, 3, 4):
        finding = f"exit code {result.exit_code}"
    elif "Traceback" in result.output or "out of memory" in result.stderr:
        finding = f"stderr: {result.stderr.strip().splitlines()[-1][:200]}"
    elif _digest(inputs) != before:
        finding = "an input file changed"
    return what, args, finding


def fuzz(work: Path, seed: int = 0, seconds: float = SECONDS, progress: Path | None = None,
         most: int = CASES, first: int = 0, on_finding=None) -> dict:
    """Run seeded cases `first`, `first` + 1, ... until case `most` has run or `seconds` have passed; the
    findings and how many ran. `on_finding` is called with each finding as it is found."""
    with np.load(DATA) as archive:
        data = {"input": archive["input"][:24], "labels": archive["labels"][:24]}
    originals = {"model": onnx.load(str(MODEL)), "data": data, "recipe": recipe_for_model(),
                 "profiles": {name: json.loads((PROFILES / f"{name}.json").read_text())
                              for name in ("npu-p32", "cpu-ort")}}
    rng = random.Random(seed)
    for _ in range(first):  # the cases before `first`, skipped: each case draws one number from `rng`
        rng.getrandbits(64)
    findings, cases, deadline = [], first, time.monotonic() + seconds
    while cases < most and time.monotonic() < deadline:
        case_rng = random.Random(rng.getrandbits(64))  # each case its own stream: one case replays alone
        if progress is not None:
            progress.write_text(f"case {cases}")
        what, args, finding = run_case(case_rng, cases, work, originals)
        if finding:
            shown = " ".join(Path(a).name if a.startswith(str(work)) else a for a in args)
            findings.append({"case": cases, "mutation": what, "command": shown, "finding": finding})
            if on_finding is not None:
                on_finding(findings[-1])
        cases += 1
    return {"cases": cases - first, "findings": findings}


def test_fuzz_breaks_nothing(tmp_path):
    out, progress = tmp_path / "result.json", tmp_path / "progress.txt"

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.test_fuzz", str(tmp_path), "--json", str(out),
                               "--progress", str(progress)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=SECONDS + 120, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fuzz hung at {progress.read_text() if progress.exists() else 'its start'}")
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cases"] >= 10, result  # the loop ran, not just started
    assert result["findings"] == [], json.dumps(result["findings"], indent=1)


def _main() -> None:
    parser = argparse.ArgumentParser(description="Run the seeded mutation fuzz of the command line.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--json", type=Path, help="Write the result here.")
    parser.add_argument("--progress", type=Path, help="The case now running, for a parent that times out.")
    parser.add_argument("--cases", type=int, default=CASES, help="Run cases up to this one (not included).")
    parser.add_argument("--first", type=int, default=0, help="Start at this case (replay one: --first N --cases N+1).")
    options = parser.parse_args()
    options.folder.mkdir(parents=True, exist_ok=True)

    def show(finding: dict) -> None:  # as found: a long run stopped early still says what it found
        print(f"  case {finding['case']}: {finding['mutation']} / {finding['command']}: {finding['finding']}",
              flush=True)

    result = fuzz(options.folder, options.seed, options.seconds, options.progress, options.cases, options.first,
                  show)
    if options.json:
        options.json.write_text(json.dumps(result))
    print(f"{result['cases']} cases, {len(result['findings'])} findings")


if __name__ == "__main__":
    _main()
