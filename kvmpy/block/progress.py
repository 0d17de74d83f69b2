"""A progress bar for long kvmpy-img operations (-p), drawn by tqdm on stderr."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Counts bytes done out of a total; a no-op unless enabled."""

    def __init__(self, enabled: bool, total: int, desc: str = "") -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=max(total, 1), unit="B", unit_scale=True, unit_divisor=1024,
                             desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
