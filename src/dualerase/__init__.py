"""dualerase: erase a class from a class-conditional diffusion transformer, and measure it.

The erasure is DualOptim's; from Python:

    from dualerase import erase_class
    result = erase_class(3)  # the embedded digits default
    result.metrics["after"]["forget_accuracy"], result.output, result.model
"""
import os
from importlib.metadata import PackageNotFoundError, version

# MKL's conditional numerical reproducibility: CPU results no longer depend on memory alignment, so
# the same command with the same seed on the same machine gives the same weights bit for bit (set
# before torch loads MKL).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

try:
    __version__ = version("dualerase")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# The public API, imported on first use: `import dualerase` alone loads no torch.
_API = {"erase_class": "dualerase.api", "sample_grid": "dualerase.api",
        "fid_bench": "dualerase.api", "ErasureResult": "dualerase.api",
        "Config": "dualerase.config", "load_config": "dualerase.config"}
__all__ = ["Config", "ErasureResult", "__version__", "erase_class", "fid_bench", "load_config",
           "sample_grid"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dualerase' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
