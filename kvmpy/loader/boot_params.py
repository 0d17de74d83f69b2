"""The Linux x86 boot protocol's data: the bzImage setup header and the boot_params "zero page".

Offsets and flags are facts from the kernel's Documentation/arch/x86/boot.rst
and zero-page.rst. ``SetupHeader`` is parsed from (and validated against) the
image; ``build_boot_params`` returns the 4 KiB page a 64-bit kernel gets in RSI:
the image's own setup header with the loader's fields filled in, the e820 map,
the command line and initrd locations and the ACPI RSDP address.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.loader.e820 import E820Entry
from kvmpy.loader.errors import LoaderError

ZERO_PAGE_SIZE = 4096
SETUP_HEADER_OFFSET = 0x1F1
HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_PROTOCOL = 0x206
E820_MAX_ENTRIES = 128

# boot_params fields outside the setup header.
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0

# Setup header fields (offsets in the image and in boot_params alike).
HDR_SETUP_SECTS = 0x1F1
HDR_VID_MODE = 0x1FA
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP = 0x200
HDR_MAGIC = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_CODE32_START = 0x214
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_RELOCATABLE = 0x234
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
HDR_PAYLOAD_OFFSET = 0x248
HDR_PAYLOAD_LENGTH = 0x24C
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260

LOADFLAG_LOADED_HIGH = 0x01
LOADFLAG_CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
LOADER_TYPE_UNDEFINED = 0xFF  # "no assigned ID": kvmpy has none
VID_MODE_NORMAL = 0xFFFF


@dataclass(frozen=True)
class SetupHeader:
    """The setup header fields a 64-bit loader uses; ``raw`` is the header as the image carries it."""

    setup_sects: int
    version: int
    loadflags: int
    xloadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    cmdline_size: int
    payload_offset: int
    payload_length: int
    pref_address: int
    init_size: int
    raw: bytes

    @property
    def kernel_offset(self) -> int:
        """File offset of the protected-mode kernel."""
        return (self.setup_sects + 1) * 512


def parse_setup_header(image: bytes, name: str = "kernel") -> SetupHeader:
    if len(image) < 0x270 or image[HDR_MAGIC:HDR_MAGIC + 4] != HDRS_MAGIC:
        raise LoaderError(f"{name}: not a Linux bzImage (no HdrS setup header)")
    u8 = lambda off: image[off]  # noqa: E731
    u16 = lambda off: struct.unpack_from("<H", image, off)[0]  # noqa: E731
    u32 = lambda off: struct.unpack_from("<I", image, off)[0]  # noqa: E731
    version = u16(HDR_VERSION)
    if u16(HDR_BOOT_FLAG) != BOOT_FLAG:
        raise LoaderError(f"{name}: bzImage boot sector has no 0xAA55 signature")
    if version < MIN_PROTOCOL:
        raise LoaderError(f"{name}: Linux boot protocol {version >> 8}.{version & 0xFF:02d} is too old "
                          f"(kvmpy needs 2.06 or later)")
    setup_sects = u8(HDR_SETUP_SECTS) or 4
    # The header runs from 0x1f1 to the end given by the jump at 0x200.
    header_end = min(0x202 + u8(HDR_JUMP + 1), ZERO_PAGE_SIZE)
    if (setup_sects + 1) * 512 >= len(image) or header_end > len(image):
        raise LoaderError(f"{name}: bzImage is truncated (setup code runs past the end of the file)")
    version_ge = lambda v: version >= v  # noqa: E731
    return SetupHeader(
        setup_sects=setup_sects,
        version=version,
        loadflags=u8(HDR_LOADFLAGS),
        xloadflags=u16(HDR_XLOADFLAGS) if version_ge(0x20C) else 0,
        initrd_addr_max=u32(HDR_INITRD_ADDR_MAX) or 0x37FFFFFF,
        kernel_alignment=u32(HDR_KERNEL_ALIGNMENT),
        relocatable=bool(u8(HDR_RELOCATABLE)),
        cmdline_size=u32(HDR_CMDLINE_SIZE),
        payload_offset=u32(HDR_PAYLOAD_OFFSET) if version_ge(0x208) else 0,
        payload_length=u32(HDR_PAYLOAD_LENGTH) if version_ge(0x208) else 0,
        pref_address=struct.unpack_from("<Q", image, HDR_PREF_ADDRESS)[0] if version_ge(0x20A) else 0x100000,
        init_size=u32(HDR_INIT_SIZE) if version_ge(0x20A) else 0,
        raw=bytes(image[SETUP_HEADER_OFFSET:header_end]),
    )


def build_boot_params(header: SetupHeader, e820: list[E820Entry], cmdline_addr: int,
                      initrd: tuple[int, int] | None, rsdp_addr: int) -> bytes:
    """The zero page for the 64-bit entry point."""
    if len(e820) > E820_MAX_ENTRIES:
        raise LoaderError(f"the e820 map has {len(e820)} entries; the zero page holds {E820_MAX_ENTRIES}")
    bp = bytearray(ZERO_PAGE_SIZE)
    bp[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + len(header.raw)] = header.raw
    struct.pack_into("<H", bp, HDR_VID_MODE, VID_MODE_NORMAL)
    bp[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    bp[HDR_LOADFLAGS] = header.loadflags | LOADFLAG_CAN_USE_HEAP
    struct.pack_into("<H", bp, HDR_HEAP_END_PTR, 0xFE00)  # as QEMU: only the 16-bit entry would use it
    struct.pack_into("<I", bp, HDR_CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    addr, size = initrd if initrd else (0, 0)
    struct.pack_into("<II", bp, HDR_RAMDISK_IMAGE, addr & 0xFFFFFFFF, size & 0xFFFFFFFF)
    struct.pack_into("<II", bp, BP_EXT_RAMDISK_IMAGE, addr >> 32, size >> 32)
    if header.version >= 0x20E:
        struct.pack_into("<Q", bp, BP_ACPI_RSDP_ADDR, rsdp_addr)
    bp[BP_E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        bp[BP_E820_TABLE + 20 * i:BP_E820_TABLE + 20 * (i + 1)] = e.pack_boot_params()
    return bytes(bp)
