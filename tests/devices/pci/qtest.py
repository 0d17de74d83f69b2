"""A QEMU pc machine driven through qtest (port I/O only): the oracle for the PCI config differential tests."""

from __future__ import annotations

import shutil
import subprocess


class QemuQtest:
    def __init__(self, *extra: str) -> None:
        """``extra``: more QEMU options, e.g. ``"-device", "virtio-serial-pci"``."""
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-M", "pc", "-nodefaults", "-display", "none", "-S",  # no firmware runs
             "-qtest", "stdio", "-qtest-log", "/dev/null", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def _cmd(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        while True:
            reply = self.proc.stdout.readline()
            if not reply:
                raise EOFError("qemu closed qtest")
            if reply.startswith(("OK", "FAIL", "ERR")):
                return reply.strip()

    def read(self, port: int, size: int) -> int:
        return int(self._cmd(f"in{'bwl'[size // 2]} {port:#x}").split()[1], 16)

    def write(self, port: int, size: int, value: int) -> None:
        self._cmd(f"out{'bwl'[size // 2]} {port:#x} {value:#x}")

    def config_space(self, devfn: int) -> bytes:
        """The function's 256-byte config space through mechanism #1."""
        out = b""
        for reg in range(0, 256, 4):
            self.write(0xCF8, 4, 0x80000000 | (devfn << 8) | reg)
            out += self.read(0xCFC, 4).to_bytes(4, "little")
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def have_qemu() -> bool:
    return shutil.which("qemu-system-x86_64") is not None
