"""kvmpy: a KVM-first hypervisor written in Python.

``kvmpy.VM`` is the Python API (docs/python-api.md); it is imported on first
use, so ``import kvmpy`` and the ``kvmpy`` command stay lean.
"""

from typing import Any

from kvmpy.version import __version__

_API_NAMES = ("VM", "VMError", "QMPError")


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        import kvmpy.api

        return getattr(kvmpy.api, name)
    raise AttributeError(f"module 'kvmpy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API_NAMES])
