"""run_machine() end to end: every guest program runs under kvmpy and under
qemu-system-riscv64 with the same flags, on both TCG tiers; UART output and exit status must match."""

from __future__ import annotations

import platform

import pytest

from kvmpy.boards.riscv_virt import VirtBoard
from kvmpy.boards.riscv_virt_run import read_program
from kvmpy.tcg.target.riscv.translate import INSTRET, PC
from tests.guests.riscv.build import GuestBuildError, build_guest
from tests.guests.riscv.oracle import guest, run_kvmpy, run_qemu

GUESTS = ["hello", "traps", "priv", "csr", "interrupts", "paging", "atomics", "rvc", "smc",
          "alu", "sha256", "qsort", "coremark", "conformance", "fpu", "triggers"]


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


def smp_guest(harts: int, **defines: int):
    try:
        return build_guest("smp", defines={"HARTS": harts, **defines})
    except GuestBuildError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("harts", [2, 4])
def test_harts_share_memory_timers_and_ipis_as_under_qemu(harts, tier, tmp_path):
    """-smp N: every hart adds to shared counters with AMOADD and LR/SC, waits for its own CLINT
    timer and for an IPI from hart 0; the totals and what each hart saw match QEMU's."""
    elf = smp_guest(harts)
    out, status = run_kvmpy(elf, tmp_path, tier=tier, smp=harts)
    q_out, q_status = run_qemu(elf, smp=harts)
    assert out.decode(errors="replace") == q_out.decode(errors="replace")
    assert (status, q_status) == (0, 0)
    assert f"amoadd: {3000 * harts:016x}".encode() in out


@pytest.mark.parametrize("tier", TIERS)
def test_sc_fails_after_another_harts_store_even_of_the_same_value(tier, tmp_path):
    """The spec's rule: an SC fails when another hart stored to the reserved address since the LR.
    QEMU compares values instead (its SC would succeed here), so kvmpy is checked on its own."""
    out, status = run_kvmpy(smp_guest(2, STORE_VALUE=5), tmp_path, tier=tier, smp=2)
    assert status == 0
    assert out.startswith(b"sc after another hart's store: 0000000000000001\n0000000000000005\n")


def test_harts_run_deterministically_under_icount(tmp_path):
    """Round-robin by retired instructions: two runs of four harts retire exactly the same counts."""
    elf = smp_guest(4)
    img = read_program(elf)
    counts = []
    for _ in range(2):
        board = VirtBoard(128 << 20, ns_per_insn=1, harts=4, tier=TIERS[-1])
        board.load(img, elf)
        ex = board.run()
        assert ex.status == 0
        counts.append([h.cpu.R[INSTRET] for h in board.harts] + [board.cpu.mtime])
    assert counts[0] == counts[1] and all(counts[0])


def test_reset_restarts_every_hart_at_the_entry():
    elf = smp_guest(2)
    img = read_program(elf)
    board = VirtBoard(128 << 20, ns_per_insn=1, harts=2, tier="py")
    board.load(img, elf)
    assert board.run().status == 0
    board.reset()
    assert [(h.cpu.R[PC], h.cpu.R[10], h.cpu.R[INSTRET]) for h in board.harts] == [(img.entry, 0, 0),
                                                                                  (img.entry, 1, 0)]
    assert board.current is board.harts[0] and board.run().status == 0
