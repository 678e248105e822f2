"""attnserve: a model server for geospatial attention models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attnserve")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
