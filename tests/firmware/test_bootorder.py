"""fw_cfg ``bootorder`` from bootindex=, and -boot order=/menu= on the command line."""

from __future__ import annotations

import pytest

from kvmpy.boards.pc_pci import place
from kvmpy.cli import boot_options
from kvmpy.config_devices import DeviceSpec
from kvmpy.errors import ConfigError
from kvmpy.firmware.bootorder import bootorder


def spec(driver: str, **props: str) -> DeviceSpec:
    return DeviceSpec(driver=driver, props=tuple(props.items()))


def test_paths_in_bootindex_order() -> None:
    devices = (spec("virtio-net-pci", bootindex="2"), spec("virtio-blk-pci", bootindex="1"),
               spec("virtio-rng-pci"), spec("virtio-blk-pci", addr="0x1f.3", bootindex="0"))
    assert bootorder(place(devices)) == (b"/pci@i0cf8/scsi@1f,3/disk@0,0\n/pci@i0cf8/scsi@3/disk@0,0\n"
                                         b"/pci@i0cf8/ethernet@2/ethernet-phy@0\0")
    assert bootorder(place((spec("virtio-blk-pci"),))) == b""
    with pytest.raises(ConfigError, match="bootindex 1 has already been used"):
        bootorder(place((spec("virtio-blk-pci", bootindex="1"), spec("virtio-net-pci", bootindex="1"))))


@pytest.mark.parametrize("text, expected", [
    ("d", {"boot_order": "d"}), ("order=dc,menu=on", {"boot_order": "dc", "boot_menu": True}),
    ("menu=off", {"boot_menu": False}),
])
def test_boot_option(text: str, expected: dict) -> None:
    assert boot_options(text) == expected


@pytest.mark.parametrize("text, message", [
    ("order=e", "Invalid boot device for PC: 'e'"), ("order=x", "Invalid boot device 'x'"), ("order=cc", "Boot device 'c' was given twice"),
    ("splash=x.jpg", "Invalid parameter 'splash'"), ("menu=maybe", "menu"),
])
def test_boot_option_mistakes(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        boot_options(text)
