"""A Linux guest on kvmpy's virtio-pci: two virtio-rng-pci functions, one on MSI-X and one on INTx.

The guest (Debian's kernel, ``kvmpy initrd`` with virtio_pci and virtio_rng) lists
/sys/bus/pci/devices (busybox has no lspci), reads /dev/hwrng from the first
device (MSI-X vectors, kicks through KVM ioeventfds), switches the hw_random core
to the second (``vectors=0``: INTx routed by PIIX3 and the ACPI _PRT) and reads
again; /proc/interrupts shows which interrupts served them. QMP query-pci shows
both functions with the BARs Linux assigned.
"""

from __future__ import annotations

import re

import pytest

import kvmpy
from tests.linux.guest_process import sh

BOOT_TIMEOUT = 300.0
STEP = 120.0
LIST = 'for d in /sys/bus/pci/devices/*; do echo "PCIDEV ${d##*/} $(cat $d/vendor):$(cat $d/device) $(cat $d/class)"; done'
HW = "/sys/class/misc/hw_random"


def read_rng(vm: "kvmpy.VM", marker: str) -> tuple[int, int]:
    """(bytes read from /dev/hwrng, distinct byte values among them)."""
    out = sh(vm.console, "head -c 8192 /dev/hwrng > /tmp/r; echo RNGLEN=$(wc -c < /tmp/r) "
                         "DISTINCT=$(od -An -v -tu1 /tmp/r | tr -s ' ' '\\n' | sort -u | grep -c .)", marker)
    m = re.search(r"RNGLEN=(\d+) DISTINCT=(\d+)", out)
    assert m, out[-2000:]
    return int(m.group(1)), int(m.group(2))


@pytest.mark.kvm_full
def test_linux_reads_dev_hwrng_over_msix_and_intx(linux_assets):
    devices = ["-device", "virtio-rng-pci,id=rng0", "-device", "virtio-rng-pci,id=rng1,vectors=0,addr=5"]
    with kvmpy.VM(linux_assets.kernel, initrd=linux_assets.initrd, memory="512M", smp=1, no_reboot=True,
                  process=True, extra_args=devices,
                  append="console=ttyS0 quiet panic=-1 kvmpy_test=shell") as vm:
        vm.console.expect("KVMPY-TEST cmdline=", timeout=BOOT_TIMEOUT)
        listing = sh(vm.console, LIST, "L1")
        rngs = sh(vm.console, f"echo AVAIL=$(cat {HW}/rng_available | tr ' ' ,) CURRENT=$(cat {HW}/rng_current)", "L2")
        first = read_rng(vm, "L3")
        sh(vm.console, f"echo virtio_rng.1 > {HW}/rng_current", "L4")
        switched = sh(vm.console, f"echo NOW=$(cat {HW}/rng_current)", "L5")
        second = read_rng(vm, "L6")
        irqs = sh(vm.console, "grep -E 'virtio' /proc/interrupts | tr -s ' ' | sed 's/^/IRQ /'", "L7")
        pci = vm.qmp("query-pci")
        vm.console.send("poweroff -f\n")
        assert vm.wait(timeout=STEP) == 0
    devs = dict((m.group(1), (m.group(2), m.group(3)))
                for m in re.finditer(r"^PCIDEV (\S+) (\S+) (\S+)\r?$", listing, re.M))
    assert devs.get("0000:00:02.0") == ("0x1af4:0x1044", "0x00ff00"), listing[-2000:]
    assert devs.get("0000:00:05.0") == ("0x1af4:0x1044", "0x00ff00"), listing[-2000:]
    assert "CURRENT=virtio_rng.0" in rngs and "virtio_rng.1" in rngs, rngs[-1000:]
    assert "NOW=virtio_rng.1" in switched, switched[-1000:]
    assert first[0] == 8192 and first[1] > 200, first  # random bytes: nearly every value appears
    assert second[0] == 8192 and second[1] > 200, second
    irq_lines = [line for line in irqs.splitlines() if line.startswith("IRQ ")]
    assert any("PCI-MSI" in line and "virtio0" in line for line in irq_lines), irq_lines
    assert any("IO-APIC" in line and "virtio1" in line for line in irq_lines), irq_lines
    funcs = {(d["slot"], d["function"]): d for d in pci[0]["devices"]}
    for slot, qdev in ((2, "rng0"), (5, "rng1")):
        d = funcs[(slot, 0)]
        assert d["id"] == {"device": 0x1044, "vendor": 0x1AF4, "subsystem": 0x1100, "subsystem-vendor": 0x1AF4}
        assert d["class_info"] == {"class": 255} and d["qdev_id"] == qdev and d["irq_pin"] == 1
        bar4 = next(r for r in d["regions"] if r["bar"] == 4)
        assert bar4["size"] == 0x4000 and bar4["mem_type_64"] and bar4["prefetch"] and bar4["address"] != -1
    assert [r["bar"] for r in funcs[(2, 0)]["regions"]] == [1, 4] and [r["bar"] for r in funcs[(5, 0)]["regions"]] == [4]
