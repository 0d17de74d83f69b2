"""Linux's bochs DRM driver on kvmpy's ``-device VGA`` with ``-vnc``, against QEMU's screen of the same guest,
and the display across a live migration.

Debian's generic kernel (it has ``bochs``; the cloud kernel has no DRM) boots a
``kvmpy initrd`` initramfs that loads bochs with its DRM helpers, hides the
console cursor, clears tty1 and writes a line of text there (fbcon on the
bochs framebuffer), then prints the EDID and mode the guest's driver saw on the
serial console. The same kernel and initramfs run under QEMU 7.2 with KVM
(inside the bed). One guest boot per VMM; on each:

- the screen as QMP ``screendump`` (PPM) and as a real VNC client library
  (vncdotool) captures it from the ``-vnc`` server (Raw, and on kvmpy ZRLE too).
  All of kvmpy's and QEMU's pictures must be equal pixel for pixel, and the guest
  must have read the same EDID bytes and picked the same mode under both;
- an idle screen's VNC traffic: the update bytes a polling viewer receives over a
  few seconds (fbcon's cursor blink is off), zero for kvmpy;
- kvmpy only: the running guest migrates to a second kvmpy (``-incoming tcp:``),
  whose screendump must equal the source's and whose VBE DISPI mode (xres, yres,
  bpp, pitch, offset) must be the source's; then the guest writes a second line on
  the destination, and a VNC viewer of the destination receives just the rows of
  that line (the framebuffer's dirty tracking works after the move) and ends with
  the destination's screendump.

The two kvmpy machines run in this process (tests/display/screens.py; their
adapters are inspected for the mode), QEMU as a child process. Measured figures
are printed and appended to ``.cache/bed-figures.log`` in the checkout (ignored
by git), which a bed run can write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmpy.display.rfb import ENC_RAW
from kvmpy.migration.migrate_cli import QmpClient
from kvmpy.tools.fetch import cache_root, fetch_busybox, fetch_kernel
from tests.display.rfb_client import RawClient
from tests.display.screens import STEP, KvmpyVmm, Screen, idle_vnc_bytes, migrate, screendump, vnc_capture
from tests.linux.guest_process import GuestProcess
from tests.monitor.test_display import free_display

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 400.0
MEMORY_MIB = 256
TEXT = "kvmpy VGA: Hello, fbcon 0123456789"
TEXT2 = "after migration: the second line"
LINE_ROWS = range(16, 32)  # fbcon's second text line in its 8x16 font (the guest picks 1280x800)
MODULES = ["bochs"]  # with its dependencies (drm, drm_kms_helper, drm_vram_helper, ttm ...) from modules.dep
APPEND = "console=ttyS0 quiet panic=-1 logo.nologo vt.global_cursor_default=0"
# After READY the guest waits for a line on its serial console (the test sends it on the migration's
# destination; QEMU's stdin is a pipe nobody writes), then writes TEXT2 on tty1.
INIT = f"""#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/$m" || echo "KVMPY-TEST insmod $m failed"; done < /etc/kvmpy-modules
for i in $(seq 100); do [ -e /dev/fb0 ] && break; sleep 0.1; done
echo 0 > /sys/class/graphics/fbcon/cursor_blink
printf '\\033[?25l\\033[2J\\033[H{TEXT}\\n' > /dev/tty1
c=$(ls -d /sys/class/drm/card0-*-1 | head -n 1)
echo "KVMPY-EDID $(od -An -v -tx1 $c/edid | tr -d ' \\n')"
echo "KVMPY-MODE $(head -n 1 $c/modes) $(cat /sys/class/graphics/fb0/virtual_size) \
$(cat /sys/class/graphics/fb0/bits_per_pixel)"
sleep 3
echo KVMPY-DISPLAY-READY
read -r go
printf '{TEXT2}\\n' > /dev/tty1
sleep 2
echo KVMPY-DISPLAY-MORE
sleep 600
"""


@dataclass(frozen=True)
class DisplayAssets:
    kernel: Path
    initrd: Path


def prepare_bed_assets(build: bool = True) -> DisplayAssets:
    """The generic kernel and an initramfs with bochs (cached under kvmpy's cache directory)."""
    kernel = fetch_kernel("amd64")
    busybox = fetch_busybox()
    out = cache_root() / "display-tests"
    key = hashlib.sha256(f"{INIT}{kernel.modules_dir}{MODULES}{busybox.stat().st_size}".encode()).hexdigest()[:16]
    initrd = out / f"initrd-{key}.gz"
    if not initrd.exists():
        if not build:
            raise FileNotFoundError(f"{initrd} was not prepared on the host")
        from kvmpy.tools.initrd import main as initrd_main

        out.mkdir(parents=True, exist_ok=True)
        (out / "init.sh").write_text(INIT)
        status = initrd_main(["-o", str(initrd), "--busybox", str(busybox), "--init", str(out / "init.sh"),
                              "--modules-dir", str(kernel.modules_dir), *(a for m in MODULES for a in ("-m", m))])
        if status != 0:
            raise RuntimeError(f"kvmpy initrd failed with status {status}")
    return DisplayAssets(kernel.vmlinuz, initrd)


def guest_facts(text: str) -> tuple[str, str]:
    edid = next((line.split(" ", 1)[1].strip() for line in text.splitlines() if line.startswith("KVMPY-EDID ")), "")
    mode = next((line.split(" ", 1)[1].strip() for line in text.splitlines() if line.startswith("KVMPY-MODE ")), "")
    return edid, mode


def record(figures: dict) -> None:
    print("display bed figures:", json.dumps(figures))
    try:
        out = REPO / ".cache"
        out.mkdir(exist_ok=True)
        with open(out / "bed-figures.log", "a") as f:
            f.write(json.dumps({"test": __name__, "time": time.time(), **figures}) + "\n")
    except OSError:
        pass


# ---- kvmpy ------------------------------------------------------------------------------------------
def linux_boot(assets: DisplayAssets) -> dict:
    return {"kernel": assets.kernel, "initrd": assets.initrd, "append": APPEND, "memory": MEMORY_MIB << 20}


@dataclass
class KvmpyResult:
    text: str  # the source's serial console
    screen: Screen  # its screendump
    vnc: Screen  # vncdotool's capture of its -vnc
    idle_bytes: int
    figures: dict
    migration_error: str  # empty when the migration checks passed


def migrate_and_write(src: KvmpyVmm, assets: DisplayAssets, tmp: Path, before: Screen, figures: dict) -> None:
    """Migrate ``src``'s guest to a new kvmpy; check its display there and that a new line reaches a viewer."""
    dst = migrate(src, tmp, figures, **linux_boot(assets))
    try:
        src_mode, dst_mode = src.vbe_mode(), dst.vbe_mode()
        assert src_mode is not None and dst_mode == src_mode, (src_mode, dst_mode)
        assert (dst_mode.width, dst_mode.height) == (before.width, before.height), dst_mode
        figures["mode"] = f"{dst_mode.width}x{dst_mode.height}x{dst_mode.bpp}"
        moved = screendump(dst.qmp, tmp / "dst.ppm")
        assert moved == before, f"after migration rows {moved.rows_differing(before)[:10]}... differ"
        assert vnc_capture(dst.port) == before
        # A viewer of the destination with the whole screen, then the guest writes its second line.
        viewer = RawClient(("127.0.0.1", dst.port))
        viewer.sock.settimeout(STEP)
        viewer.set_encodings(ENC_RAW)
        start = viewer.received
        viewer.request(False)
        viewer.read_update()
        figures["full_update_raw_bytes"] = viewer.received - start
        dst.console.send(b"\n")
        dst.wait_for(b"KVMPY-DISPLAY-MORE", STEP)
        viewer.request(True)
        before_bytes = viewer.received
        rects = viewer.read_update()
        figures["second_line_update_raw_bytes"] = viewer.received - before_bytes
        viewer.close()
        after = screendump(dst.qmp, tmp / "dst2.ppm")
        changed = after.rows_differing(before)
        updated = sorted({y for _, top, _, h, _, _ in rects for y in range(top, top + h)})
        figures["second_line_update_rects"] = [r[:4] for r in rects]
        assert changed and set(changed) <= set(LINE_ROWS), f"rows {changed} changed, not just the second line's"
        assert set(changed) <= set(updated) <= set(LINE_ROWS), (changed, [r[:4] for r in rects])
        assert vnc_capture(dst.port) == after
    finally:
        dst.close()


def kvmpy_run(assets: DisplayAssets, tmp: Path) -> KvmpyResult:
    figures: dict = {}
    begin = time.monotonic()
    src = KvmpyVmm(tmp, "src", **linux_boot(assets))
    try:
        src.wait_for(b"KVMPY-DISPLAY-READY", BOOT_TIMEOUT)
        figures["kvmpy_boot_s"] = round(time.monotonic() - begin, 1)
        screen = screendump(src.qmp, tmp / "src.ppm")
        vnc = vnc_capture(src.port)
        assert vnc_capture(src.port, zrle=True) == screen, "kvmpy's VNC capture in ZRLE is not its screendump"
        idle = idle_vnc_bytes(src.port)
        figures["kvmpy_idle_bytes"] = idle
        text = src.console.output.decode(errors="replace")
        try:  # its outcome is asserted after the comparisons with QEMU, so that one bed run tells all
            migrate_and_write(src, assets, tmp, screen, figures)
            migration_error = ""
        except Exception:
            migration_error = traceback.format_exc(limit=-3)
    finally:
        src.close()
    figures["kvmpy_total_s"] = round(time.monotonic() - begin, 1)
    return KvmpyResult(text, screen, vnc, idle, figures, migration_error)


# ---- QEMU -------------------------------------------------------------------------------------------
def qemu_run(assets: DisplayAssets, tmp: Path) -> tuple[Screen, Screen, int, str, dict]:
    """QEMU's (screendump, VNC capture, idle VNC bytes, serial text, figures) once the guest is ready."""
    sock = tmp / "qemu.qmp"
    display = free_display()
    begin = time.monotonic()
    proc = GuestProcess(["qemu-system-x86_64", "-accel", "kvm", "-m", str(MEMORY_MIB), "-nodefaults", "-no-reboot",
                         "-display", "none", "-vnc", f"127.0.0.1:{display}", "-device", "VGA",
                         "-kernel", str(assets.kernel), "-initrd", str(assets.initrd), "-append", APPEND,
                         "-serial", "stdio", "-qmp", f"unix:{sock},server=on,wait=off"], cwd=tmp)
    try:
        proc.expect("KVMPY-DISPLAY-READY", BOOT_TIMEOUT)
        figures = {"qemu_boot_s": round(time.monotonic() - begin, 1)}
        qmp = QmpClient(f"unix:{sock}", timeout=STEP)
        try:
            screen = screendump(qmp, tmp / "qemu.ppm")
        finally:
            qmp.close()
        vnc = vnc_capture(5900 + display)
        idle = idle_vnc_bytes(5900 + display)
        figures["qemu_idle_bytes"] = idle
        return screen, vnc, idle, proc.text(), figures
    finally:
        proc.close()


@pytest.mark.kvm_full
def test_fbcon_on_bochs_drm_matches_qemus_screendump() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed")
    pytest.importorskip("vncdotool.api")
    assets = prepare_bed_assets(build=os.environ.get("KVMPY_IN_BED") != "1")
    tmp = Path(tempfile.mkdtemp(prefix="kd", dir="/tmp"))  # a UNIX socket cannot live on a 9p share
    try:
        ours = kvmpy_run(assets, tmp)
        theirs, their_vnc, _, their_text, figures = qemu_run(assets, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures.update(ours.figures)
    record(figures)
    our_edid, our_mode = guest_facts(ours.text)
    their_edid, their_mode = guest_facts(their_text)
    assert their_edid and our_edid == their_edid, (our_edid, their_edid)
    assert our_mode == their_mode, (our_mode, their_mode)
    assert (ours.screen.width, ours.screen.height) == (theirs.width, theirs.height)
    if ours.screen != theirs:
        rows = ours.screen.rows_differing(theirs)
        pytest.fail(f"{len(rows)} rows differ (first {rows[:10]}); mode {our_mode}")
    assert any(ours.screen.rgb[i] for i in range(0, 16 * ours.screen.width * 3, 3)), "the text line is missing"
    assert ours.vnc == ours.screen, "kvmpy's VNC capture is not its screendump"
    assert their_vnc == theirs, "QEMU's VNC capture is not its screendump"
    assert ours.idle_bytes == 0, f"kvmpy's idle screen sent {ours.idle_bytes} bytes; figures {figures}"
    assert not ours.migration_error, f"the migration: {ours.migration_error}\nfigures {figures}"
