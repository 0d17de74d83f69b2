"""-boot once=/strict=/splash-time=/reboot-timeout= (kvmpy.cli.boot_options, the RTC's boot bytes, fw_cfg).

QEMU 7.2 is the oracle: its one-line messages for each mistake, and, through ``-qtest stdio``,
the CMOS boot bytes (0x3D, 0x38) it gives SeaBIOS before and after the first reset (once=
lasts one boot; the reset restores order=). kvmpy's RTC is built from the same arguments.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from kvmpy.boards.pc import DEFAULT_BOOT_ORDER
from kvmpy.cli import boot_options, main, parse_qemu_args
from kvmpy.devices.rtc import CmosRtc
from kvmpy.errors import ConfigError

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is the oracle")
BOOT_BYTES = (0x3D, 0x38)


def qemu_error(args: list[str]) -> str:
    p = subprocess.run([QEMU, "-nodefaults", "-display", "none", "-S", "-qmp", "stdio", *args], capture_output=True,
                       timeout=60, text=True, input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n')
    assert p.returncode == 1, p.stderr
    return p.stderr.strip().removeprefix("qemu-system-x86_64: ")


@pytest.mark.parametrize("text", [
    "once=x", "once=cc", "once=d,order=q", "order=q", "order=e", "once=e", "once=q,order=x", "order=A", "splash-time=-1", "splash-time=70000", "splash-time=abc",
    "reboot-timeout=70000", "reboot-timeout=-2", "reboot-timeout=x", "strict=maybe",
])
def test_mistakes_are_qemus(text: str, capsys) -> None:
    with pytest.raises(ConfigError) as info:
        boot_options(text)
    assert str(info.value) == qemu_error(["-boot", text])
    assert main(["-enable-kvm", "-boot", text]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(info.value) in err


@pytest.mark.parametrize("text, expected", [
    ("order=c,once=d", {"boot_order": "c", "boot_once": "d"}),
    ("strict=on,splash-time=5000,reboot-timeout=-1",
     {"boot_strict": True, "boot_splash_time": 5000, "boot_reboot_timeout": -1}),
    ("cd,once=n,reboot-timeout=0x10", {"boot_order": "cd", "boot_once": "n", "boot_reboot_timeout": 16}),
])
def test_accepted_as_qemu_accepts_them(text: str, expected: dict) -> None:
    assert boot_options(text) == expected
    p = subprocess.run([QEMU, "-nodefaults", "-display", "none", "-S", "-qmp", "stdio", "-boot", text],
                       capture_output=True, timeout=60, text=True,
                       input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n')
    assert p.returncode == 0, p.stderr


def qemu_boot_bytes(boot: str) -> tuple[list[int], list[int]]:
    """CMOS 0x3D and 0x38 under QEMU at power-on and after one reset (through 0xCF9), read with qtest."""
    with subprocess.Popen([QEMU, "-nodefaults", "-display", "none", "-machine", "pc", "-qtest", "stdio",
                           "-boot", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as p:
        assert p.stdin is not None and p.stdout is not None

        def ask(line: str) -> str:
            p.stdin.write(line + "\n")
            p.stdin.flush()
            answer = p.stdout.readline().split()
            assert answer[0] == "OK", answer
            return answer[-1]

        def cmos() -> list[int]:
            out = []
            for reg in BOOT_BYTES:
                ask(f"outb 0x70 {reg:#x}")
                out.append(int(ask("inb 0x71"), 16))
            return out

        try:
            time.sleep(1.0)  # qtest answers early in start-up, before vl.c applies once= to the CMOS
            before = cmos()
            ask("outb 0xcf9 0x6")
            time.sleep(1.0)  # the reset request is served by QEMU's main loop
            after, again = cmos(), cmos()
            while after != again:  # a read raced the reset: read until stable
                after, again = again, cmos()
        finally:
            p.kill()
    return before, after


@pytest.mark.parametrize("boot", ["order=c,once=dn", "once=d", "order=dc", "order=n,once=c"])
def test_once_lasts_until_the_first_reset_as_in_qemu(boot: str) -> None:
    config = parse_qemu_args(["-enable-kvm", "-boot", boot])
    rtc = CmosRtc(boot_order=config.boot_order or DEFAULT_BOOT_ORDER, boot_once=config.boot_once)
    before = [rtc.cmos[r] for r in BOOT_BYTES]
    rtc.reset()
    after = [rtc.cmos[r] for r in BOOT_BYTES]
    rtc.reset()
    assert [rtc.cmos[r] for r in BOOT_BYTES] == after  # later resets keep order=
    assert (before, after) == qemu_boot_bytes(boot)

