"""activedet: active learning + semi-supervised object detection for driving data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("activedet")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
