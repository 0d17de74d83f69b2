"""Linux's i8042, atkbd and VT drivers on kvmpy's PS/2 keyboard: keys typed through QMP send-key and
through a VNC viewer arrive as a line on the guest's /dev/tty1.

The guest (Debian's cloud kernel, the busybox initramfs of the Linux tests) finds both
i8042 ports (its AUX probe loops a byte back through 0xD3 and waits for IRQ12) and the
keyboard ("AT Translated Set 2 keyboard", after GETID, LEDs and scanning commands); a
shell reads one line from tty1 while the host types it. The cloud kernel has no psmouse
driver, so the mouse's packets are left to the host tests and the VGA bed test.
"""

from __future__ import annotations

import re
import time

import pytest

import kvmpy
from tests.display.rfb_client import RawClient
from tests.linux.guest_process import sh
from tests.monitor.test_display import free_display

BOOT_TIMEOUT = 300.0
STEP = 120.0
# A str given to expect() is literal text, so these are compiled; "$" keeps the shell's echo of the
# command itself ("TYPED1=[$L]") from matching.
TYPED1, TYPED2 = (re.compile(rf"TYPED{n}=\[[^\]\r\n$]*\]") for n in (1, 2))
KEYSYMS = {"k": 0x6B, "v": 0x76, "m": 0x6D, "2": 0x32, "ret": 0xFF0D}


@pytest.mark.kvm_full
def test_linux_reads_keys_typed_by_qmp_and_vnc(linux_assets):
    display = free_display()
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="256M", smp=1, no_reboot=True,
                  process=True, extra_args=["-vnc", f"127.0.0.1:{display}"],
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell") as vm:
        vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        probe = sh(vm.console, "dmesg | grep -E 'i8042|serio|input:' | sed 's/^/DMESG /'", "P1")
        # QMP send-key: one key at a time, as a person types.
        vm.console.send("read -r L < /dev/tty1; echo TYPED1=[$L]\n")
        time.sleep(2)
        for key in ("k", "v", "m", "shift", "ret"):
            if key == "shift":
                vm.qmp("send-key", {"keys": [{"type": "qcode", "data": "shift"}, {"type": "qcode", "data": "1"}]})
            else:
                vm.qmp("send-key", {"keys": [{"type": "qcode", "data": key}]})
            time.sleep(0.3)
        typed1 = vm.console.expect(TYPED1, timeout=STEP).group(0)
        # A VNC viewer's KeyEvents.
        vm.console.send("read -r L < /dev/tty1; echo TYPED2=[$L]\n")
        time.sleep(2)
        viewer = RawClient(("127.0.0.1", 5900 + display))
        for key in ("v", "m", "2", "ret"):
            viewer.key(KEYSYMS[key], True)
            viewer.key(KEYSYMS[key], False)
            time.sleep(0.3)
        typed2 = vm.console.expect(TYPED2, timeout=STEP).group(0)
        viewer.close()
        vm.console.send("poweroff -f\n")
        assert vm.wait(timeout=STEP) == 0
    lines = [line for line in probe.splitlines() if line.startswith("DMESG ")]
    assert any(re.search(r"serio: i8042 KBD port at 0x60,0x64 irq 1", line) for line in lines), lines
    assert any(re.search(r"serio: i8042 AUX port at 0x60,0x64 irq 12", line) for line in lines), lines
    assert any("AT Translated Set 2 keyboard" in line for line in lines), lines
    assert typed1 == "TYPED1=[kvm!]", typed1
    assert typed2 == "TYPED2=[vm2]", typed2
