"""The pc board's catalogue: every name is one the front end knows, and the board builds each one it lists."""

from __future__ import annotations

from kvmpy import board_catalog as catalog
from kvmpy.boards.pc_pci import PCI_DRIVERS
from kvmpy.config import BOARDS
from kvmpy.config_devices import DEVICE_DRIVERS
from kvmpy.net.netdev import netdev_types


def test_every_pci_driver_the_pc_board_accepts_has_its_factory() -> None:
    pc = BOARDS["pc"].device_drivers
    assert pc == catalog.PC_DEVICE_DRIVERS
    assert {d for d in pc if DEVICE_DRIVERS[d].bus == "PCI"} == set(PCI_DRIVERS) == set(catalog.PC_PCI_DRIVERS)
    for factory in PCI_DRIVERS.values():
        assert factory.module.startswith("kvmpy.devices.") and callable(factory.resolve())
    assert all(DEVICE_DRIVERS[d].bus != "PCI" for d in catalog.PC_OTHER_DRIVERS)


def test_the_pc_board_takes_every_netdev_type_make_netdev_builds() -> None:
    assert BOARDS["pc"].netdev_types == set(netdev_types()) == {"socket", "stream", "tap", "user"}


def test_validating_a_config_imports_no_board_and_no_device() -> None:
    import subprocess
    import sys

    code = ("import sys, kvmpy.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('kvmpy.boards', 'kvmpy.devices', 'kvmpy.kvm'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", out
