"""al-pipeline: an active-learning labelling pipeline for images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("al-pipeline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
