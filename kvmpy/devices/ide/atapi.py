"""The ATAPI CD-ROM's MMC command set: 12-byte packets in, data or sense out, and its removable medium.

``execute`` decodes one packet and answers with an ``AtapiResult``: an error (the sense key,
ASC and ASCQ are kept for REQUEST SENSE), a small reply built here, or a run of 2048-byte
sectors the channel reads from the medium as it moves them (PIO chunks or a DMA PRD table),
so a guest asking for millions of sectors never makes the VMM allocate them. Answers follow
MMC and QEMU's hw/ide/atapi.c: INQUIRY as "QEMU DVD-ROM", READ TOC formats 0 and 1 (LBA or
MSF), the error-recovery and capabilities mode pages, GET CONFIGURATION's profile list,
media events through GET EVENT STATUS NOTIFICATION, eject and lock through START STOP UNIT
and PREVENT ALLOW MEDIUM REMOVAL. A new medium raises UNIT ATTENTION once, as a drive does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from kvmpy.devices.device import DeviceStateError, check_keys, int_field
from kvmpy.devices.ide.identify import FIRMWARE_REVISION
from kvmpy.devices.ide.regs import CD_SECTOR_SIZE

# sense keys and additional sense codes
NO_SENSE, NOT_READY, ILLEGAL_REQUEST, UNIT_ATTENTION = 0x00, 0x02, 0x05, 0x06
ASC_INV_OPCODE, ASC_LBA_OUT_OF_RANGE, ASC_INV_FIELD = 0x20, 0x21, 0x24
ASC_MEDIUM_MAY_HAVE_CHANGED, ASC_MEDIUM_NOT_PRESENT, ASC_REMOVAL_PREVENTED = 0x28, 0x3A, 0x53

# opcodes
TEST_UNIT_READY, REQUEST_SENSE, INQUIRY, START_STOP_UNIT = 0x00, 0x03, 0x12, 0x1B
PREVENT_ALLOW, READ_CAPACITY, READ_10, SEEK_10 = 0x1E, 0x25, 0x28, 0x2B
READ_TOC, GET_CONFIGURATION, GET_EVENT_STATUS, MODE_SENSE_10 = 0x43, 0x46, 0x4A, 0x5A
READ_12, MECHANISM_STATUS = 0xA8, 0xBD
# commands answered even while a unit attention is pending (QEMU's ALLOW_UA)
ALLOW_UA = frozenset({INQUIRY, REQUEST_SENSE, GET_CONFIGURATION, GET_EVENT_STATUS})
# commands that need a medium (QEMU's CHECK_READY)
NEED_MEDIUM = frozenset({TEST_UNIT_READY, READ_CAPACITY, READ_10, READ_12, SEEK_10, READ_TOC})

CD_MAX_BYTES = 80 * 60 * 75 * 2048  # larger media are DVDs
PROFILE_DVD_ROM, PROFILE_CD_ROM = 0x0010, 0x0008
MEDIA_EVENT_NONE, MEDIA_EVENT_NEW, MEDIA_EVENT_EJECT_REQUEST = 0, 2, 1


@dataclass(frozen=True)
class AtapiResult:
    """A packet's outcome: ``error``, or ``length`` bytes of ``payload`` or of sectors from ``lba``."""

    error: bool = False
    length: int = 0
    lba: int = 0
    count: int = 0  # sectors of the medium (0: the payload)
    payload: bytes = b""


def _msf(lba: int) -> bytes:
    lba += 150
    return bytes((0, lba // (75 * 60), (lba // 75) % 60, lba % 75))


def _u16(p: bytes, off: int) -> int:
    return struct.unpack_from(">H", p, off)[0]


def _u32(p: bytes, off: int) -> int:
    return struct.unpack_from(">I", p, off)[0]


class Atapi:
    """One CD-ROM drive: its medium (a drive or None), tray, lock and sense."""

    def __init__(self, medium: Any) -> None:
        self.medium = medium
        self.tray_open = False
        self.locked = False
        self.sense_key = self.asc = self.ascq = 0
        self.unit_attention = False
        self.media_event = MEDIA_EVENT_NONE

    # ---- the medium (QMP eject / blockdev-change-medium) --------------------------------------
    def sectors(self) -> int:
        return self.medium.size() // CD_SECTOR_SIZE if self.medium is not None else 0

    @property
    def ready(self) -> bool:
        return self.medium is not None and not self.tray_open

    def change_medium(self, medium: Any) -> None:
        """Insert ``medium`` (None: remove it); the guest sees a unit attention and a media event."""
        self.medium = medium
        self.tray_open = False
        if medium is not None:
            self.unit_attention = True
            self.media_event = MEDIA_EVENT_NEW

    def eject_request(self) -> bool:
        """QMP eject: False when the guest has locked the tray (the guest is told it was asked)."""
        if self.locked:
            self.media_event = MEDIA_EVENT_EJECT_REQUEST
            return False
        self.tray_open = True
        return True

    # ---- sense -----------------------------------------------------------------------------
    def _fail(self, key: int, asc: int, ascq: int = 0) -> AtapiResult:
        self.sense_key, self.asc, self.ascq = key, asc, ascq
        return AtapiResult(error=True)

    def set_error_sense(self) -> None:
        """A transfer failed underneath (DMA to bad memory): report it as an invalid field."""
        self.sense_key, self.asc, self.ascq = ILLEGAL_REQUEST, ASC_INV_FIELD, 0

    def _reply(self, data: bytes, alloc: int) -> AtapiResult:
        data = data[:alloc]
        self.sense_key = self.asc = self.ascq = 0
        return AtapiResult(length=len(data), payload=data)

    def _ok(self) -> AtapiResult:
        self.sense_key = self.asc = self.ascq = 0
        return AtapiResult()

    # ---- packets ---------------------------------------------------------------------------
    def execute(self, packet: bytes) -> AtapiResult:
        p = bytes(packet).ljust(12, b"\0")[:12]
        op = p[0]
        if self.unit_attention and op not in ALLOW_UA:
            self.unit_attention = False
            return self._fail(UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED)
        if op in NEED_MEDIUM and not self.ready:
            return self._fail(NOT_READY, ASC_MEDIUM_NOT_PRESENT, 2 if self.tray_open else 1)
        handler = {
            TEST_UNIT_READY: lambda: self._ok(), REQUEST_SENSE: self._request_sense, INQUIRY: self._inquiry,
            READ_CAPACITY: self._read_capacity, READ_10: self._read, READ_12: self._read, SEEK_10: self._seek,
            READ_TOC: self._read_toc, MODE_SENSE_10: self._mode_sense, GET_CONFIGURATION: self._get_configuration,
            GET_EVENT_STATUS: self._event_status, START_STOP_UNIT: self._start_stop,
            PREVENT_ALLOW: self._prevent_allow, MECHANISM_STATUS: self._mechanism_status,
        }.get(op)
        if handler is None:
            return self._fail(ILLEGAL_REQUEST, ASC_INV_OPCODE)
        if op in (TEST_UNIT_READY,):
            return handler()
        return handler(p)  # type: ignore[call-arg]

    def _request_sense(self, p: bytes) -> AtapiResult:
        data = bytearray(18)
        data[0], data[2], data[7], data[12], data[13] = 0x70, self.sense_key, 10, self.asc, self.ascq
        out = bytes(data[:p[4]])
        if self.sense_key == UNIT_ATTENTION:
            self.unit_attention = False
        self.sense_key = self.asc = self.ascq = 0
        return AtapiResult(length=len(out), payload=out)

    def _inquiry(self, p: bytes) -> AtapiResult:
        if p[1] & 1:  # vital product data pages are not offered
            return self._fail(ILLEGAL_REQUEST, ASC_INV_FIELD)
        data = bytes((0x05, 0x80, 0x00, 0x21, 31, 0, 0, 0)) + b"QEMU    " + b"QEMU DVD-ROM    " + \
            FIRMWARE_REVISION.encode().ljust(4)
        return self._reply(data, _u16(p, 3))

    def _read_capacity(self, p: bytes) -> AtapiResult:
        return self._reply(struct.pack(">II", max(self.sectors() - 1, 0), CD_SECTOR_SIZE), 8)

    def _read(self, p: bytes) -> AtapiResult:
        lba = _u32(p, 2)
        count = _u16(p, 7) if p[0] == READ_10 else _u32(p, 6)
        if lba + count > self.sectors():
            return self._fail(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
        if count == 0:
            return self._ok()
        self.sense_key = self.asc = self.ascq = 0
        return AtapiResult(length=count * CD_SECTOR_SIZE, lba=lba, count=count)

    def _seek(self, p: bytes) -> AtapiResult:
        if _u32(p, 2) >= self.sectors():
            return self._fail(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
        return self._ok()

    def _read_toc(self, p: bytes) -> AtapiResult:
        msf, fmt, track, alloc = bool(p[1] & 2), p[2] & 0x0F or p[9] >> 6, p[6], _u16(p, 7)
        addr = (lambda lba: _msf(lba)) if msf else (lambda lba: struct.pack(">I", lba))
        if fmt == 0:
            if track > 1 and track != 0xAA:
                return self._fail(ILLEGAL_REQUEST, ASC_INV_FIELD)
            body = b""
            if track <= 1:
                body += bytes((0, 0x14, 1, 0)) + addr(0)
            body += bytes((0, 0x16, 0xAA, 0)) + addr(self.sectors())
            data = struct.pack(">HBB", len(body) + 2, 1, 1) + body
        elif fmt == 1:
            data = struct.pack(">HBB", 10, 1, 1) + bytes((0, 0x14, 1, 0)) + addr(0)
        else:
            return self._fail(ILLEGAL_REQUEST, ASC_INV_FIELD)
        return self._reply(data, alloc)

    def _mode_page(self, page: int) -> bytes:
        if page == 0x01:
            return bytes((0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0))
        caps = bytearray(20)
        caps[0:2] = (0x2A, 0x12)
        caps[2], caps[3] = 0x3B, 0x00  # reads CD-R/RW, DVD-ROM...
        caps[4], caps[5] = 0x71, 0x73
        caps[6] = 0x29 | (0x02 if self.locked else 0)  # tray, eject, lock (state)
        caps[7] = 0x00
        struct.pack_into(">HHHH", caps, 8, 706, 2, 512, 706)
        return bytes(caps)

    def _mode_sense(self, p: bytes) -> AtapiResult:
        control, page, alloc = p[2] >> 6, p[2] & 0x3F, _u16(p, 7)
        if control == 3:
            return self._fail(ILLEGAL_REQUEST, 0x39)  # saving parameters not supported
        if page == 0x3F:
            pages = self._mode_page(0x01) + self._mode_page(0x2A)
        elif page in (0x01, 0x2A):
            pages = self._mode_page(page)
        else:
            return self._fail(ILLEGAL_REQUEST, ASC_INV_FIELD)
        if control == 1:  # changeable values: none
            pages = b"".join(pg[:2] + bytes(len(pg) - 2) for pg in (pages[:8], pages[8:]) if pg)
        header = struct.pack(">HBBxxxx", len(pages) + 6, 0x70, 0)
        return self._reply(header + pages, alloc)

    def _profile(self) -> int:
        if not self.ready:
            return 0
        return PROFILE_DVD_ROM if self.medium.size() > CD_MAX_BYTES else PROFILE_CD_ROM

    def _get_configuration(self, p: bytes) -> AtapiResult:
        rt, start, alloc = p[1] & 3, _u16(p, 2), _u16(p, 7)
        if rt == 3:
            return self._fail(ILLEGAL_REQUEST, ASC_INV_FIELD)
        cur = self._profile()
        features = []
        if start == 0:
            profiles = b"".join(struct.pack(">HBx", prof, int(prof == cur)) for prof in (PROFILE_DVD_ROM,
                                                                                       PROFILE_CD_ROM))
            features.append(struct.pack(">HBB", 0, 0x03, len(profiles)) + profiles)
        if start <= 1 and rt != 2 or start == 1:
            features.append(struct.pack(">HBBIB3x", 1, 0x0B, 8, 2, 1))  # core: ATAPI, DBE
        if start <= 2 and rt != 2 or start == 2:
            features.append(struct.pack(">HBBB3x", 2, 0x07, 4, 2))  # morphing: asynchronous events
        body = b"".join(features)
        data = struct.pack(">IxxH", len(body) + 4, cur) + body
        return self._reply(data, alloc)

    def _event_status(self, p: bytes) -> AtapiResult:
        if not p[1] & 1:  # only polled operation
            return self._fail(ILLEGAL_REQUEST, ASC_INV_FIELD)
        classes, alloc = p[4], _u16(p, 7)
        if classes & 0x10:
            event, self.media_event = self.media_event, MEDIA_EVENT_NONE
            status = (0x02 if self.medium is not None else 0) | (0x01 if self.tray_open else 0)
            data = struct.pack(">HBB", 6, 0x04, 0x10) + bytes((event, status, 0, 0))
        else:
            data = struct.pack(">HBB", 2, 0x80, 0x10)
        return self._reply(data, alloc)

    def _start_stop(self, p: bytes) -> AtapiResult:
        loej, start = bool(p[4] & 2), bool(p[4] & 1)
        if loej and not start:
            if self.locked:
                return self._fail(NOT_READY, ASC_REMOVAL_PREVENTED, 2)
            self.tray_open = True
        elif loej and start:
            self.tray_open = False
        return self._ok()

    def _prevent_allow(self, p: bytes) -> AtapiResult:
        self.locked = bool(p[4] & 1)
        return self._ok()

    def _mechanism_status(self, p: bytes) -> AtapiResult:
        data = bytes((0, 0x10 if self.tray_open else 0, 0, 0, 0, 0, 0, 8))
        return self._reply(data, _u16(p, 8))

    # ---- data ------------------------------------------------------------------------------
    def data(self, res: AtapiResult, start: int, n: int) -> bytes:
        """``n`` bytes of the answer from ``start``: the payload, or the medium's sectors."""
        if not res.count:
            return res.payload[start:start + n]
        buf = bytearray(n)
        if self.medium is None:
            raise ValueError("the medium went away")
        self.medium.read_into(res.lba * CD_SECTOR_SIZE + start, [memoryview(buf)])
        return bytes(buf)

    # ---- reset and migration ----------------------------------------------------------------
    def reset(self) -> None:
        self.locked = False
        self.sense_key = self.asc = self.ascq = 0

    def save(self) -> dict[str, Any]:
        return {"tray_open": self.tray_open, "locked": self.locked, "sense": [self.sense_key, self.asc, self.ascq],
                "unit_attention": self.unit_attention, "media_event": self.media_event}

    @staticmethod
    def validate(state: Any) -> dict[str, Any]:
        check_keys(state, {"tray_open", "locked", "sense", "unit_attention", "media_event"})
        for key in ("tray_open", "locked", "unit_attention"):
            if type(state[key]) is not bool:
                raise DeviceStateError(f"{key} must be a boolean")
        sense = state["sense"]
        if not (isinstance(sense, list) and len(sense) == 3 and all(type(v) is int and 0 <= v <= 0xFF
                                                                     for v in sense) and sense[0] <= 0x0F):
            raise DeviceStateError("bad sense")
        int_field(state, "media_event", 0, 2)
        return dict(state)

    def restore(self, state: dict[str, Any]) -> None:
        self.tray_open, self.locked = state["tray_open"], state["locked"]
        self.sense_key, self.asc, self.ascq = state["sense"]
        self.unit_attention, self.media_event = state["unit_attention"], state["media_event"]
