"""The tool's version, as installed: what `--version`, `onnx_tailor.__version__`, reports and the
metadata of every written model quote."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnx-tailor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
