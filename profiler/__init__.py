"""goprof: CPU and memory profiles of unmodified Go programs, from eBPF."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("goprof")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "dev"
