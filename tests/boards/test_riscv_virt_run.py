"""run_machine() end to end: every guest program runs under kvmpy and under
qemu-system-riscv64 with the same flags, on both TCG tiers; UART output and exit status must match."""

from __future__ import annotations

import platform

import pytest

from tests.guests.riscv.oracle import guest, run_kvmpy, run_qemu

GUESTS = ["hello", "traps", "priv", "csr", "interrupts", "paging", "atomics", "rvc", "smc",
          "alu", "sha256", "qsort", "coremark", "conformance", "fpu"]


TIERS = ["py", "native"] if platform.machine() == "x86_64" else ["py"]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", GUESTS)
def test_guest_matches_qemu(name, tier, tmp_path):
    elf = guest(name)
    out, status = run_kvmpy(elf, tmp_path, tier=tier)
    q_out, q_status = run_qemu(elf)
    assert out.decode(errors="replace") == q_out.decode(errors="replace")
    assert status == q_status
    assert out, "the guest printed nothing"
