#!/usr/bin/env python3
"""Display: bytes and time per full-screen VNC update, and idle and small-change traffic, kvmpy vs QEMU.

Both VMMs run side by side, with the same flags, the same guest and the same picture:

  -m 64 -nodefaults -device VGA -display none -vnc 127.0.0.1:N -serial file:LOG
  -kernel vgafill.elf -initrd picture.bin -append "w=1024 h=768 change=K"

The guest (tests/guests/vgafill.S, multiboot) finds the std VGA (PCI 1234:1111),
gives BAR0 an address if nothing did, sets the DISPI mode 1024x768x32 with the
linear framebuffer and copies the picture (a multiboot module) into it: gradients,
flat "windows", a block of text-like glyphs and a block of noise, so every
encoding has work to do. Then it halts. This host's PVM KVM runs it, so the
bench runs here, not in the nested bed.

A small RFB client (tests/display/rfb_client.py for the handshake) first checks
with Raw that each server shows exactly the picture. Then, per encoding both
servers speak (Raw, zlib, ZRLE; tight is QEMU's only and gets no ratio):

  full update   a non-incremental request for the whole screen, ``--repeat`` times
                on one connection; bytes on the wire and wall time from sending the
                request to the update's first and last byte (medians). QEMU answers on
                its display refresh timer, which slows down while the screen is idle,
                so its times include that wait; its raw row shows about how long.
  idle          incremental requests kept outstanding for ``--idle-secs`` on the
                unchanging screen: every byte the server sends.
  small change  a second pair of VMs whose guest inverts a 64x64 block every
                ``--change-ticks`` PIT ticks (~55 ms each); incremental requests for
                ``--change-secs``: every byte sent, and how many updates carried it.

The VMs are measured one at a time (the other one idles), so they do not compete
for the CPUs. Each run prints its own figures; nothing is fixed in advance.

Usage:  python bench/display.py [--repeat 10] [--encodings raw,zlib,zrle,tight]
        python bench/display.py --quick        # a smoke run: 2 updates, 1 s windows
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import HERE, Table, vmms  # noqa: E402
from kvmpy.display.rfb import ENC_COMPRESS_LEVEL_0, ENC_DESKTOP_SIZE, ENC_RAW, ENC_ZLIB, ENC_ZRLE  # noqa: E402
from tests.display.rfb_client import RawClient  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402

ENC_TIGHT = 7  # RFB registry; kvmpy does not serve it
ENCODINGS = {"raw": ENC_RAW, "zlib": ENC_ZLIB, "zrle": ENC_ZRLE, "tight": ENC_TIGHT}
ENC_NAMES = {v: k for k, v in ENCODINGS.items()}
FLAGS = ["-m", "64", "-nodefaults", "-device", "VGA", "-display", "none", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
WIDTH, HEIGHT = 1024, 768
READY = "vgafill: ready"


def log(msg: str) -> None:
    """Progress goes to stderr; stdout holds only the results."""
    print(f"display: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the picture

def picture(width: int, height: int, seed: int = 1) -> np.ndarray:
    """A deterministic desktop-like XRGB picture (uint32, height x width): a gradient backdrop,
    flat windows with title bars, a block of two-colour glyphs and a block of noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(width, dtype=np.uint32)[None, :]
    y = np.arange(height, dtype=np.uint32)[:, None]
    img = ((x * 255 // max(width - 1, 1)) << 16) | ((y * 255 // max(height - 1, 1)) << 8) \
        | (((x + y) * 255 // max(width + height - 2, 1)) & 0xFF)
    img = np.ascontiguousarray(img, dtype=np.uint32)

    def window(x0: int, y0: int, w: int, h: int, colour: int) -> tuple[int, int, int, int]:
        x1, y1 = min(x0 + w, width), min(y0 + h, height)
        img[y0:y1, x0:x1] = colour
        img[y0:min(y0 + 20, y1), x0:x1] = 0x2050A0  # title bar
        return x0, y0 + 20, x1, y1

    window(width // 16, height // 16, width // 3, height // 3, 0xE0E0E0)
    tx0, ty0, tx1, ty1 = window(width // 2 - 40, height // 8, width // 2, height // 2, 0xFFFFFF)
    # Text-like: 8x16 cells drawn from a "font" of 64 made-up 6x10 glyphs (as text repeats its
    # letters), about one cell in six a space, in dark ink on the window's white.
    cols, rows = (tx1 - tx0 - 16) // 8, (ty1 - ty0 - 16) // 16
    font = np.zeros((65, 16, 8), dtype=bool)  # glyph 0 is the space
    font[1:, 3:13, 1:7] = rng.random((64, 10, 6)) < 0.35
    text = np.where(rng.random((rows, cols)) < 0.16, 0, rng.integers(1, 65, (rows, cols)))
    ink = font[text].transpose(0, 2, 1, 3).reshape(rows * 16, cols * 8)
    area = img[ty0 + 8:ty0 + 8 + rows * 16, tx0 + 8:tx0 + 8 + cols * 8]
    area[ink] = 0x101010
    # Noise: a photo-like block no encoder can squeeze.
    nw, nh = width // 4, height // 4
    img[height - nh - 16:height - 16, 16:16 + nw] = rng.integers(0, 1 << 24, (nh, nw), dtype=np.uint32)
    return img


# ---------------------------------------------------------------- the VMs

def free_vnc_displays(count: int) -> list[int]:
    """``count`` distinct VNC display numbers whose ports (5900+N) are free now."""
    found: list[int] = []
    with ExitStack() as stack:
        for n in range(40, 100):
            s = stack.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", 5900 + n))
            except OSError:
                continue
            found.append(n)
            if len(found) == count:
                return found
    raise RuntimeError("no free VNC ports in 5940..5999")


@dataclass
class Vm:
    """One VMM running the guest, its VNC address and serial log."""

    name: str
    proc: subprocess.Popen
    address: tuple[str, int]
    serial: Path
    stderr: Path

    def wait_ready(self, timeout: float) -> None:
        """Until the guest says it has drawn; RuntimeError with the reason if it fails or dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
            lines = text.split("\n")[:-1]  # complete lines only: the guest writes a byte at a time
            if any(ln.startswith(READY) for ln in lines):
                return
            failed = [ln for ln in lines if ln.startswith("vgafill:")]
            if self.proc.poll() is not None or failed:
                tail = self.stderr.read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"{self.name}: guest failed (exit {self.proc.poll()}): "
                                   f"{'; '.join(failed + tail) or 'no output'}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: guest not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def running(tmp: Path, kernel: Path, image: Path, append: str, tag: str) -> Iterator[dict[str, Vm]]:
    """Both VMMs (QEMU only if installed) booting the guest side by side; stopped on the way out."""
    runners = vmms()
    displays = free_vnc_displays(len(runners))
    vms: dict[str, Vm] = {}
    try:
        for (name, cmd), display in zip(runners.items(), displays):
            serial, err = tmp / f"{tag}-{name}.serial", tmp / f"{tag}-{name}.stderr"
            argv = [*cmd, *FLAGS, "-vnc", f"127.0.0.1:{display}", "-serial", f"file:{serial}",
                    "-kernel", str(kernel), "-initrd", str(image), "-append", append]
            with open(err, "wb") as err_file:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=err_file)
            vms[name] = Vm(name, proc, ("127.0.0.1", 5900 + display), serial, err)
        yield vms
    finally:
        for vm in vms.values():
            vm.stop()


# ---------------------------------------------------------------- the client side

@dataclass
class Update:
    """What one or more FramebufferUpdate messages carried: wire bytes, rectangles, encodings."""

    nbytes: int = 0
    rects: int = 0
    area: int = 0
    encodings: set[int] = field(default_factory=set)
    first_byte: float | None = None  # perf_counter() when the first message header had arrived


@dataclass(frozen=True)
class FullUpdate:
    """Medians over the repeated full updates of one encoding."""

    nbytes: float
    first_ms: float  # request to the first byte: waiting for the server to start sending
    last_ms: float  # request to the last byte
    rects: int


def _compact_length(client: RawClient) -> int:
    """Tight's 1-3 byte length, 7 bits a byte, low bits first."""
    n = 0
    for shift in (0, 7, 14):
        b = client.recv(1)[0]
        n |= (b & (0x7F if shift < 14 else 0xFF)) << shift
        if shift == 14 or not b & 0x80:
            return n
    return n


def _skip_tight(client: RawClient, w: int, h: int) -> None:
    """Read past one tight rectangle (RFC 6143 registry / TightVNC): fill, JPEG, PNG or basic."""
    tpixel = 3 if client.pixel_format.bits_per_pixel == 32 and client.pixel_format.depth == 24 \
        else client.pixel_format.bytes_per_pixel
    control = client.recv(1)[0] >> 4
    if control == 0x8:  # fill
        client.recv(tpixel)
        return
    if control in (0x9, 0xA):  # JPEG, QEMU's PNG
        client.recv(_compact_length(client))
        return
    if control > 0x7:
        raise RuntimeError(f"tight: unknown compression control {control:#x}")
    filt = client.recv(1)[0] if control & 0x4 else 0
    size = w * h * tpixel
    if filt == 1:  # palette
        colours = client.recv(1)[0] + 1
        client.recv(colours * tpixel)
        size = (w + 7) // 8 * h if colours == 2 else w * h
    elif filt not in (0, 2):
        raise RuntimeError(f"tight: unknown filter {filt}")
    client.recv(size if size < 12 else _compact_length(client))


def read_update(client: RawClient, into: Update) -> None:
    """One FramebufferUpdate, framing only (no decoding), added to ``into``."""
    start = client.received
    kind, _, count = struct.unpack("!BBH", client.recv(4))
    if into.first_byte is None:
        into.first_byte = time.perf_counter()
    if kind != 0:
        raise RuntimeError(f"server message {kind}, expected a FramebufferUpdate")
    for _ in range(count):
        x, y, w, h, enc = struct.unpack("!HHHHi", client.recv(12))
        into.rects += 1
        into.encodings.add(enc)
        if enc == ENC_DESKTOP_SIZE:
            client.width, client.height = w, h
        if enc < 0:  # a pseudo-encoding: no payload
            continue
        into.area += w * h
        if enc == ENC_RAW:
            client.recv(w * h * client.pixel_format.bytes_per_pixel)
        elif enc in (ENC_ZLIB, ENC_ZRLE):
            (n,) = struct.unpack("!I", client.recv(4))
            client.recv(n)
        elif enc == ENC_TIGHT:
            _skip_tight(client, w, h)
        else:
            raise RuntimeError(f"server sent encoding {enc}, which was not asked for")
    into.nbytes += client.received - start


class WrongSize(RuntimeError):
    """The server's screen is not (yet) the guest's mode."""


def full_screen(client: RawClient) -> Update:
    """Ask for the whole screen and read until it is covered; a DesktopSize on the way resizes it."""
    got = Update()
    client.request(False)
    while got.area < client.width * client.height:
        read_update(client, got)
    return got


def connect(vm: Vm, encoding: int, level: int | None) -> RawClient:
    """A viewer that speaks ``encoding`` (and DesktopSize, as real viewers do), past one uncounted
    full update so that the screen size has settled."""
    client = RawClient(vm.address)
    try:
        client.sock.settimeout(60)
        encs = [encoding, ENC_DESKTOP_SIZE] + ([ENC_COMPRESS_LEVEL_0 + level] if level is not None else [])
        client.set_encodings(*encs)
        full_screen(client)
        if (client.width, client.height) != (WIDTH, HEIGHT):
            raise WrongSize(f"{vm.name}: the screen is {client.width}x{client.height}, not {WIDTH}x{HEIGHT}")
    except BaseException:
        client.close()
        raise
    return client


def check_screen(vm: Vm, expected: np.ndarray, timeout: float) -> float:
    """Wait until the server's Raw full update is the picture (the padding byte aside); the seconds
    that took after the guest said it had drawn. RuntimeError with the last difference on timeout."""
    start = time.monotonic()
    while True:
        try:
            client = connect(vm, ENC_RAW, None)
            try:
                got = np.zeros_like(expected)
                covered = 0
                client.request(False)
                while covered < expected.size:
                    for x, y, w, h, enc, data in client.read_update():
                        if enc == ENC_RAW:
                            got[y:y + h, x:x + w] = np.frombuffer(data, dtype="<u4").reshape(h, w)
                            covered += w * h
            finally:
                client.close()
            diff = int(np.count_nonzero((got ^ expected) & 0xFFFFFF))
            if not diff:
                return time.monotonic() - start
            reason = f"{diff} pixels of the screen differ from the picture"
        except WrongSize as exc:
            reason = str(exc)
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{vm.name}: {reason} ({timeout:.0f} s after the guest drew)")
        time.sleep(0.2)


def full_updates(vm: Vm, encoding: int, repeat: int, level: int | None) -> FullUpdate:
    """Medians of a non-incremental whole-screen update, over ``repeat`` on one connection."""
    client = connect(vm, encoding, level)
    sizes, firsts, lasts, rects = [], [], [], 0
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            got = full_screen(client)
            lasts.append((time.perf_counter() - t0) * 1e3)
            assert got.first_byte is not None
            firsts.append((got.first_byte - t0) * 1e3)
            sizes.append(got.nbytes)
            rects = got.rects
    finally:
        client.close()
    return FullUpdate(statistics.median(sizes), statistics.median(firsts), statistics.median(lasts), rects)


def incremental(vm: Vm, encoding: int, seconds: float, level: int | None) -> list[int]:
    """Bytes of each update a server sends in ``seconds`` while an incremental request is always
    outstanding (after connect's full update, which is not counted)."""
    client = connect(vm, encoding, level)
    sizes: list[int] = []
    try:
        client.request(True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([client.sock], [], [], left)[0]:
                break
            got = Update()
            read_update(client, got)
            sizes.append(got.nbytes)
            client.request(True)
    finally:
        client.close()
    return sizes


# ---------------------------------------------------------------- the run

def measure(args: argparse.Namespace) -> int:
    encodings = [ENCODINGS[e] for e in args.encodings]
    kernel = build_guest("vgafill")
    image_pixels = picture(WIDTH, HEIGHT)
    with tempfile.TemporaryDirectory(prefix="display-bench-") as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "picture.bin"
        image_pixels.astype("<u4").tofile(image)
        full: dict[str, dict[int, FullUpdate]] = {}
        idle: dict[str, list[int]] = {}
        change: dict[str, dict[int, list[int]]] = {}
        log(f"booting the static guest under {', '.join(vmms())}")
        with running(tmp, kernel, image, f"w={WIDTH} h={HEIGHT}", "static") as vms:
            for vm in vms.values():
                vm.wait_ready(args.boot_timeout)
            for name, vm in vms.items():
                lag = check_screen(vm, image_pixels, args.boot_timeout)
                log(f"{name}'s VNC screen showed the picture {lag:.1f} s after the guest drew it")
            for enc in encodings:
                for name, vm in vms.items():
                    if enc == ENC_TIGHT and name == "kvmpy":
                        continue
                    full.setdefault(name, {})[enc] = got = full_updates(vm, enc, args.repeat, args.level)
                    log(f"{name} {ENC_NAMES[enc]}: {got.nbytes:.0f} B, first byte {got.first_ms:.1f} ms, "
                        f"last {got.last_ms:.1f} ms per full update ({got.rects} rects)")
            for name, vm in vms.items():
                idle[name] = incremental(vm, args.idle_encoding, args.idle_secs, args.level)
                log(f"{name} idle {args.idle_secs:g} s: {len(idle[name])} updates, {sum(idle[name])} B")
        if args.change_secs > 0:
            log(f"booting the blinking guest (a 64x64 block every {args.change_ticks} PIT ticks)")
            with running(tmp, kernel, image, f"w={WIDTH} h={HEIGHT} change={args.change_ticks}", "blink") as vms:
                for vm in vms.values():
                    vm.wait_ready(args.boot_timeout)
                for enc in encodings:
                    for name, vm in vms.items():
                        if enc == ENC_TIGHT and name == "kvmpy":
                            continue
                        change.setdefault(name, {})[enc] = sizes = incremental(vm, enc, args.change_secs, args.level)
                        log(f"{name} {ENC_NAMES[enc]} small change: {len(sizes)} updates, {sum(sizes)} B")
    report(args, encodings, full, idle, change)
    return 0


def report(args: argparse.Namespace, encodings: list[int], full: dict, idle: dict, change: dict) -> None:
    """The tables: one row per encoding both servers speak; QEMU-only encodings on a line of their own."""
    both = [e for e in encodings if e in full.get("kvmpy", {})]
    only_qemu = [e for e in encodings if e not in both and e in full.get("QEMU", {})]

    def rows(title: str, unit: str, precision: int, table: dict, pick: Callable[[Any], float]) -> None:
        print(title)
        t = Table(label="encoding", precision=precision, unit=unit)
        t.header()
        for enc in both:
            qemu = table.get("QEMU", {})
            t.row(ENC_NAMES[enc], pick(table["kvmpy"][enc]), pick(qemu[enc]) if enc in qemu else None)
        for enc in only_qemu:
            if enc in table.get("QEMU", {}):
                print(f"{ENC_NAMES[enc] + ' (QEMU only)':{t.label_width}} {pick(table['QEMU'][enc]):>{t.width * 2 + 1}.{precision}f}"
                      f"  ({unit}; kvmpy has no {ENC_NAMES[enc]})")

    level = "each server's default" if args.level is None else str(args.level)
    print(f"\nVNC display on {HERE}: {WIDTH}x{HEIGHT}x32 std VGA, compression level {level}, "
          f"medians of {args.repeat}")
    rows("full-screen update, bytes on the wire", "bytes", 0, full, lambda r: r.nbytes)
    rows("full-screen update, request to first byte (the server's wait plus its encoding)", "ms", 1,
         full, lambda r: r.first_ms)
    rows("full-screen update, request to last byte", "ms", 1, full, lambda r: r.last_ms)
    if "QEMU" in full:
        print("  (QEMU answers on its display refresh timer, whose interval grows while the screen is idle:\n"
              "   its raw row, which costs no encoding, shows about how long it waited)")
    print(f"idle screen for {args.idle_secs:g} s ({ENC_NAMES[args.idle_encoding]}), all bytes sent")
    t = Table(label="idle", precision=0, unit="bytes")
    t.header()
    t.row("idle", sum(idle["kvmpy"]), sum(idle["QEMU"]) if "QEMU" in idle else None)
    print("  updates: " + ", ".join(f"{name} {len(sizes)}" for name, sizes in idle.items()))
    if change:
        period = args.change_ticks * 65536 / 1193182
        rows(f"small change (a 64x64 block inverted every {period * 1e3:.0f} ms) for {args.change_secs:g} s, "
             "all bytes sent", "bytes", 0, change, lambda sizes: float(sum(sizes)))
        for name, per_enc in change.items():
            print(f"  updates {name}: " + ", ".join(f"{ENC_NAMES[e]} {len(s)}" for e, s in per_enc.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10, help="full updates per encoding (median kept)")
    ap.add_argument("--encodings", default="raw,zlib,zrle,tight",
                    help="comma-separated, from raw, zlib, zrle, tight (default: all)")
    ap.add_argument("--level", type=int, choices=range(10), default=None,
                    help="ask both servers for this zlib compression level (default: each one's own)")
    ap.add_argument("--idle-secs", type=float, default=5.0, help="seconds of idle-screen traffic")
    ap.add_argument("--idle-encoding", default="zrle", choices=["raw", "zlib", "zrle"])
    ap.add_argument("--change-secs", type=float, default=5.0, help="seconds of the small-change case; 0 skips it")
    ap.add_argument("--change-ticks", type=int, default=9, help="PIT ticks (~55 ms) between changes")
    ap.add_argument("--boot-timeout", type=float, default=120.0, help="seconds for each guest to draw")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 updates, 1 s windows")
    args = ap.parse_args(argv)
    names = [e.strip().lower() for e in args.encodings.split(",") if e.strip()]
    unknown = [e for e in names if e not in ENCODINGS]
    if unknown or not names:
        ap.error(f"unknown encoding {', '.join(unknown) or '(none given)'}; choose from {', '.join(ENCODINGS)}")
    if args.repeat < 1 or args.change_ticks < 1 or args.idle_secs <= 0:
        ap.error("--repeat and --change-ticks must be at least 1, --idle-secs above 0")
    args.encodings = names
    args.idle_encoding = ENCODINGS[args.idle_encoding]
    if args.quick:
        args.repeat, args.idle_secs, args.change_secs = 2, 1.0, min(args.change_secs, 2.0)
    try:
        return measure(args)
    except (RuntimeError, OSError, EOFError) as exc:
        print(f"display bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the VMs are stopped on the way out of running()
        print("display bench interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
