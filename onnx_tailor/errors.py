"""The errors onnx-tailor raises for things a user can fix.

Every error a user can cause (a missing file, a bad flag, a site that does not
exist) is a `TailorError`: the CLI prints its message on one line and exits
non-zero instead of showing a traceback. Anything else escaping the library
is a bug in onnx-tailor, and keeps its traceback.
"""


class TailorError(Exception):
    """A problem with the user's input, reported in one line."""

    exit_code = 1


class ModelLoadError(TailorError):
    """The file is missing, not ONNX, truncated, or uses an unsupported opset."""


class InputShapeError(TailorError):
    """A concrete input shape is needed and the model does not fix one."""


class InputTypeError(TailorError):
    """A model input of an element type onnx-tailor cannot make seeded values for (real data can feed it)."""


class PassError(TailorError):
    """Unknown pass, unknown site, or a bad pass parameter."""


class DataError(TailorError):
    """Data that does not fit the model: an unknown input name, a wrong shape or dtype,
    labels of the wrong length, NaN, an empty folder, an unreadable file."""


class MetricError(TailorError):
    """A metric that cannot be computed: an unknown name, missing labels or reference
    outputs, outputs it cannot read, or a plug-in that fails to import or raises."""


class VerificationError(TailorError):
    """An exact rewrite changed the model's outputs; the model is not returned.

    This points at a bug in a pass (or a model it does not understand), so it
    exits with its own code to stand apart from ordinary input errors.
    """

    exit_code = 3


class QuantizationError(TailorError):
    """A model onnxruntime's quantizer cannot turn into an int8 model, or whose int8 form it cannot run."""


class ModelTooLargeError(TailorError):
    """A step that needs a model's whole serialization met a model past protobuf's 2 GiB limit."""


class OutputError(TailorError):
    """An output that cannot be written: a missing or read-only folder, a full disk, a name already taken."""
