"""Real firmware on the riscv64 virt board: Debian's OpenSBI (fw_jump) + U-Boot (qemu-riscv64_smode).

kvmpy and qemu-system-riscv64 run with the same flags; each must reach the
U-Boot prompt, answer ``version`` and ``echo hi`` typed on the console, and end
with status 0 on ``poweroff``.  The U-Boot banner and the ``version`` answer
must be the same under both.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

OPENSBI_JUMP = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")
UBOOT = Path("/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin")
QEMU = "qemu-system-riscv64"
FLAGS = ["-M", "virt", "-m", "128M", "-smp", "1", "-nographic",
         "-bios", str(OPENSBI_JUMP), "-kernel", str(UBOOT)]
PROMPT = b"=> "
BOOT_TIMEOUT = 600          # seconds to the prompt; kvmpy's pure-Python TCG needs tens of seconds
COMMAND_TIMEOUT = 120

pytestmark = pytest.mark.skipif(not (OPENSBI_JUMP.is_file() and UBOOT.is_file()),
                                reason="apt-get install opensbi u-boot-qemu")


@dataclass
class Console:
    """A machine run as a child process with its serial console on a pipe."""

    proc: subprocess.Popen
    out: bytearray = field(default_factory=bytearray)

    def expect(self, text: bytes, timeout: float, since: int = 0) -> int:
        """Read until ``text`` appears at or after ``since``; return the offset just past it."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while (at := self.out.find(text, since)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} after {timeout} s; console so far:\n"
                                     f"{self.out[-2000:].decode(errors='replace')}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"machine ended (status {self.proc.wait()}) before {text!r}:\n"
                                         f"{self.out[-2000:].decode(errors='replace')}")
                self.out += chunk
        return at + len(text)

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        for ch in line.encode():        # one byte at a time, as typed: the UART has a small FIFO
            self.proc.stdin.write(bytes([ch]))
            self.proc.stdin.flush()
            time.sleep(0.02)

    def command(self, line: str) -> bytes:
        """Type ``line`` at the prompt; return what U-Boot answered, up to the next prompt."""
        start = len(self.out)
        self.type(line + "\r")
        echoed = self.expect(line.encode(), COMMAND_TIMEOUT, start)
        end = self.expect(PROMPT, COMMAND_TIMEOUT, echoed)
        return bytes(self.out[echoed:end - len(PROMPT)]).replace(b"\r\n", b"\n").strip(b"\n")


def start(argv: list[str]) -> Console:
    env = dict(os.environ)
    return Console(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env=env))


def session(argv: list[str], commands: tuple[str, ...] = ("version", "echo hi")
            ) -> tuple[bytes, dict[str, bytes], int, float]:
    """Boot to the prompt, run the commands, power off: (boot log, answers, exit status, seconds to prompt)."""
    t0 = time.monotonic()
    con = start(argv)
    try:
        con.expect(b"Hit any key to stop autoboot", BOOT_TIMEOUT)
        con.type(" ")
        at = con.expect(PROMPT, BOOT_TIMEOUT)
        to_prompt = time.monotonic() - t0
        boot_log = bytes(con.out[:at])
        answers = {cmd: con.command(cmd) for cmd in commands}
        con.type("poweroff\r")
        status = con.proc.wait(timeout=COMMAND_TIMEOUT)
        return boot_log, answers, status, to_prompt
    finally:
        if con.proc.poll() is None:
            con.proc.kill()
            con.proc.wait()


def banner(log: bytes) -> bytes:
    m = re.search(rb"U-Boot \d{4}\.\d\d[^\r\n]*", log)
    assert m, log.decode(errors="replace")
    return m.group()


def test_uboot_prompt_commands_and_poweroff_match_qemu():
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (apt-get install qemu-system-misc)")
    k_log, k_answers, k_status, k_time = session([sys.executable, "-m", "kvmpy", *FLAGS])
    q_log, q_answers, q_status, q_time = session([QEMU, *FLAGS])
    print(f"time to the U-Boot prompt: kvmpy {k_time:.1f} s, QEMU {q_time:.1f} s")
    assert b"OpenSBI v" in k_log and b"Domain0 Next Address      : 0x0000000080200000" in k_log
    assert banner(k_log) == banner(q_log)
    assert k_answers["version"] == q_answers["version"] and k_answers["version"].startswith(banner(q_log))
    assert k_answers["echo hi"] == q_answers["echo hi"] == b"hi"
    assert (k_status, q_status) == (0, 0)


@pytest.mark.parametrize("harts, bios", [(1, []), (2, ["-bios", "default"])])
def test_fw_dynamic_finds_uboot_and_the_dtb_through_a2(harts, bios):
    """-bios default, which is also what no -bios means (as in QEMU), is OpenSBI fw_dynamic: it learns
    the next stage and its mode from the fw_dynamic_info that a2 points at in the MROM, and passes the
    DTB from a1 on to U-Boot. Its boot hart is the one fw_dynamic_info names (hart 0, as QEMU's),
    whichever hart runs first."""
    flags = smp_flags(harts)
    flags = [*flags[:flags.index("-bios")], *bios, "-kernel", str(UBOOT)]
    log, answers, status, _ = session([sys.executable, "-m", "kvmpy", *flags])
    assert opensbi_lines(log)[b"Boot HART ID"] == b"0"
    assert opensbi_lines(log)[b"Platform HART Count"] == str(harts).encode()
    assert b"Domain0 Next Address      : 0x0000000080200000" in log
    assert b"Domain0 Next Arg1         : 0x0000000087e00000" in log
    assert b"Domain0 Next Mode         : S-mode" in log
    assert answers["echo hi"] == b"hi" and status == 0


# OpenSBI banner lines that differ between kvmpy's hart and QEMU's, for a reason:
HART_DIFFERENCES = {
    b"Boot HART Base ISA": "no H extension in kvmpy's hart",
    b"Boot HART MHPM Count": "no hardware performance counters",
    b"Boot HART MIDELEG": "no H extension: no VS/guest interrupt bits",
    b"Boot HART MEDELEG": "no H extension: no guest page faults",
}
# fw_jump's boot hart is whichever wins OpenSBI's lottery (an AMO): under QEMU any hart may,
# kvmpy runs hart 0 first, so hart 0 always wins there.
BOOT_HART_LINES = (b"Boot HART ID", b"Domain0 Boot HART")
SMP_COMMANDS = ("version", "cpu detail", "fdt addr $fdtcontroladdr", "fdt print /cpus/cpu-map", "echo hi")


def opensbi_lines(log: bytes) -> dict[bytes, bytes]:
    """``Key : value`` lines of OpenSBI's banner, up to the U-Boot banner."""
    text = log.split(b"U-Boot 20")[0].replace(b"\r", b"")
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(rb"^([A-Z][^:\n]*?)\s*:\s*(.*)$", text, re.M)}


def smp_flags(harts: int) -> list[str]:
    flags = list(FLAGS)
    flags[flags.index("-smp") + 1] = str(harts)
    return flags


@pytest.mark.parametrize("tier, harts", [("native", 2), ("py", 2), ("native", 4)])
def test_opensbi_and_uboot_on_several_harts_match_qemu(tier, harts):
    """-smp N: OpenSBI counts the harts and parks all but its boot hart in HSM, U-Boot sees
    each cpu node, and poweroff ends the machine with status 0; as under QEMU."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (apt-get install qemu-system-misc)")
    flags = smp_flags(harts)
    k_log, k_ans, k_status, k_time = session([sys.executable, "-m", "kvmpy", "-accel", f"tcg,tier={tier}",
                                              *flags], SMP_COMMANDS)
    q_log, q_ans, q_status, q_time = session([QEMU, *flags], SMP_COMMANDS)
    print(f"-smp {harts} tier={tier}: time to the U-Boot prompt: kvmpy {k_time:.1f} s, QEMU {q_time:.1f} s")
    k_sbi, q_sbi = opensbi_lines(k_log), opensbi_lines(q_log)
    assert k_sbi[b"Platform HART Count"] == q_sbi[b"Platform HART Count"] == str(harts).encode()
    assert k_sbi[b"Boot HART ID"] == k_sbi[b"Domain0 Boot HART"] == b"0"
    assert q_sbi[b"Boot HART ID"] == q_sbi[b"Domain0 Boot HART"] and int(q_sbi[b"Boot HART ID"]) < harts
    skip = set(HART_DIFFERENCES) | set(BOOT_HART_LINES)
    assert {k: v for k, v in k_sbi.items() if k not in skip} == {k: v for k, v in q_sbi.items() if k not in skip}
    assert banner(k_log) == banner(q_log) and k_ans["version"] == q_ans["version"]
    isa = re.compile(rb"rv64[a-z0-9_]+")
    assert isa.sub(b"ISA", k_ans["cpu detail"]) == isa.sub(b"ISA", q_ans["cpu detail"])
    assert k_ans["cpu detail"].count(b"cpu@") == harts
    assert k_ans["fdt print /cpus/cpu-map"] == q_ans["fdt print /cpus/cpu-map"]
    assert k_ans["echo hi"] == q_ans["echo hi"] == b"hi"
    assert (k_status, q_status) == (0, 0)
