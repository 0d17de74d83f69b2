"""The test tree itself: pytest's default import mode needs unique basenames outside packages."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _module_name(path: Path) -> str:
    # A file in a directory with __init__.py is imported under its package path; others by basename.
    parts = [path.stem]
    d = path.parent
    while (d / "__init__.py").exists():
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts)


def test_test_modules_have_unique_import_names() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for f in TESTS.rglob("test_*.py"):
        if "_build" in f.parts:
            continue
        seen[_module_name(f)].append(str(f.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test modules that pytest would import under one name: {clashes}"
