"""A device factory named by its module and function, imported the first time a board builds it.

A board's tables list every device it can build, but one VM builds few of
them. Importing each device's module (and what that module needs: the block
layer, the VNC server's ciphers, the IDE controller) up front made every VM
start pay for all of them; under the nested test bed's emulated CPU that was
about a third of kvmpy's start-up. A ``LazyFactory`` stands in the table
instead and imports its module when it is first called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class LazyFactory:
    """``module.name(*args)``, with ``module`` imported on the first call."""

    module: str
    name: str

    def resolve(self) -> Callable[..., Any]:
        """The factory function itself (imports its module if it is not yet loaded)."""
        return getattr(importlib.import_module(self.module), self.name)  # type: ignore[no-any-return]

    def __call__(self, *args: Any) -> Any:
        return self.resolve()(*args)
