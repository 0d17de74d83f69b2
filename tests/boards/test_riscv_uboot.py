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


def session(argv: list[str]) -> tuple[bytes, dict[str, bytes], int, float]:
    """Boot to the prompt, run the commands, power off: (boot log, answers, exit status, seconds to prompt)."""
    t0 = time.monotonic()
    con = start(argv)
    try:
        con.expect(b"Hit any key to stop autoboot", BOOT_TIMEOUT)
        con.type(" ")
        at = con.expect(PROMPT, BOOT_TIMEOUT)
        to_prompt = time.monotonic() - t0
        boot_log = bytes(con.out[:at])
        answers = {cmd: con.command(cmd) for cmd in ("version", "echo hi")}
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


def test_fw_dynamic_finds_uboot_and_the_dtb_through_a2():
    """-bios default is OpenSBI fw_dynamic: it learns the next stage and its mode from the
    fw_dynamic_info that a2 points at in the MROM, and passes the DTB from a1 on to U-Boot."""
    flags = [*FLAGS[:FLAGS.index("-bios")], "-bios", "default", "-kernel", str(UBOOT)]
    log, answers, status, _ = session([sys.executable, "-m", "kvmpy", *flags])
    assert b"Domain0 Next Address      : 0x0000000080200000" in log
    assert b"Domain0 Next Arg1         : 0x0000000087e00000" in log
    assert b"Domain0 Next Mode         : S-mode" in log
    assert answers["echo hi"] == b"hi" and status == 0
