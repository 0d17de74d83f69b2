"""Fixtures shared by the firmware tests that boot SeaBIOS under kvmpy and QEMU side by side."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A scratch directory with a short path under /tmp: it holds the VMs' UNIX sockets (108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="kvfw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
