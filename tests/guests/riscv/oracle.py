"""Runners for the riscv64 test guests: kvmpy in-process and qemu-system-riscv64 as the oracle."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.guests.riscv.build import GuestBuildError, build_guest
from kvmpy.config import MachineConfig
from kvmpy.boards.riscv_virt_run import run_machine



QEMU = "qemu-system-riscv64"
QEMU_TIMEOUT = 60


def guest(name: str) -> Path:
    try:
        return build_guest(name)
    except GuestBuildError as exc:
        if "cannot run" in str(exc):
            pytest.skip(str(exc))
        raise


def run_kvmpy(elf: Path, tmp_path: Path, memory: int = 128 << 20, trace: set[str] | None = None,
              trace_file: Path | None = None, tier: str = "", smp: int = 1,
              icount: int | None = None) -> tuple[bytes, int]:
    out = tmp_path / f"{elf.stem}.serial"
    cfg = MachineConfig(arch="riscv64", kernel=elf, memory=memory, serial=f"file:{out}",
                        trace=frozenset(trace or ()), trace_file=trace_file, tcg_tier=tier, smp=smp,
                        icount=icount)
    status = run_machine(cfg)
    return out.read_bytes(), status


def run_qemu(elf: Path, memory: str = "128M", smp: int = 1) -> tuple[bytes, int]:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (apt-get install qemu-system-misc)")
    proc = subprocess.run(
        [QEMU, "-machine", "virt", "-cpu", "rv64", "-bios", "none", "-kernel", str(elf),
         "-nographic", "-m", memory, "-smp", str(smp)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=QEMU_TIMEOUT)
    return proc.stdout, proc.returncode
