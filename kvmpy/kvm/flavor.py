"""Which kind of KVM this host offers: complete (hardware-backed), PVM-based, or none.

PVM ("kvm_pvm") emulates guest ring 0, so only tiny guests run on it; an
unmodified Linux kernel hangs. Callers use this to warn users and to decide
where tests that need a complete KVM must run.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path


class KvmKind(enum.Enum):
    COMPLETE = "complete"
    PVM = "pvm"
    MISSING = "missing"


def host_kvm_kind(dev: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")) -> KvmKind:
    """Classify the KVM behind ``dev`` without opening it."""
    if not dev.exists() or not os.access(dev, os.R_OK | os.W_OK):
        return KvmKind.MISSING
    if (sys_module / "kvm_pvm").exists():
        return KvmKind.PVM
    return KvmKind.COMPLETE
