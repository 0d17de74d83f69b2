"""A Linux guest finds the PC's PCI bus: the ACPI root bridge PCI0, 00:00.0 (i440FX) and 00:01.0 (PIIX3).

Busybox has no lspci, so the guest lists /sys/bus/pci/devices; the kernel log
must show the root bridge and no ACPI errors (the link devices' methods run
against PIIX3's PIRQ registers through a PCI_Config region while Linux boots).
"""

from __future__ import annotations

import re

import pytest

import kvmpy

BOOT_TIMEOUT = 300.0
LIST = ('for d in /sys/bus/pci/devices/*; do echo "PCIDEV ${d##*/} $(cat $d/vendor):$(cat $d/device) '
        '$(cat $d/class)"; done; echo PCI-LIST-$((6*7))\n')
ACPI = ('echo "ACPIDEVS $(ls /sys/bus/acpi/devices | grep -c "^PNP0C0F:") '
        '$(ls /sys/bus/acpi/devices | grep -c "^PNP0A03:") $((6*7))"\n')
LOG = 'dmesg | grep -E "PCI Root Bridge|ACPI.*(Error|Exception)|AE_|pci 0000" | sed "s/^/KLOG /"; echo KLOG-$((6*7))\n'


@pytest.mark.kvm_full
def test_linux_sees_the_host_and_isa_bridges(linux_assets):
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", smp=1, no_reboot=True,
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell") as vm:
        vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        vm.console.send(LIST)
        vm.console.expect("PCI-LIST-42", timeout=120)  # the output, not the echoed command
        vm.console.send(ACPI)
        vm.console.expect(re.compile(r"ACPIDEVS \d+ \d+ 42"), timeout=120)
        vm.console.send(LOG)
        vm.console.expect("KLOG-42", timeout=120)
        pci = vm.qmp("query-pci")
        vm.console.send("poweroff -f\n")
        assert vm.wait(timeout=120) == 0
    out = vm.console.output
    devices = dict((m.group(1), (m.group(2), m.group(3)))
                   for m in re.finditer(r"^PCIDEV (\S+) (\S+) (\S+)\r?$", out, re.M))
    assert devices == {"0000:00:00.0": ("0x8086:0x1237", "0x060000"),
                       "0000:00:01.0": ("0x8086:0x7000", "0x060100")}, out[-3000:]
    assert "ACPIDEVS 5 1 42" in out, out[-3000:]  # LNKA-LNKD, LNKS; PCI0
    klog = [line for line in out.splitlines() if line.startswith("KLOG ")]
    assert any("PCI Root Bridge [PCI0] (domain 0000 [bus 00-ff])" in line for line in klog), klog
    errors = [line for line in klog if re.search(r"Error|Exception|AE_", line)]
    assert errors == [], errors
    assert [(d["slot"], d["function"]) for d in pci[0]["devices"]] == [(0, 0), (1, 0)]
