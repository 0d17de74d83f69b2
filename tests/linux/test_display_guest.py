"""Linux's bochs DRM driver on kvmpy's ``-device VGA``, against QEMU's screendump of the same guest.

Debian's generic kernel (it has ``bochs``; the cloud kernel has no DRM) boots a
``kvmpy initrd`` initramfs that loads bochs with its DRM helpers, hides the
console cursor, clears tty1 and writes a line of text there (fbcon on the
bochs framebuffer), then prints the EDID and mode the guest's driver saw on the
serial console. The same kernel and initramfs run under QEMU 7.2 with KVM
(inside the bed) and ``screendump``; kvmpy's picture is the device's own
``refresh()`` frame. They must be equal pixel for pixel, and the guest must have
read the same EDID bytes and picked the same mode under both.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmpy.tools.fetch import cache_root, fetch_busybox, fetch_kernel

BOOT_TIMEOUT = 400.0
TEXT = "kvmpy VGA: Hello, fbcon 0123456789"
MODULES = ["bochs"]  # with its dependencies (drm, drm_kms_helper, drm_vram_helper, ttm ...) from modules.dep
APPEND = "console=ttyS0 quiet panic=-1 logo.nologo vt.global_cursor_default=0"
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
echo "KVMPY-MODE $(head -n 1 $c/modes) $(cat /sys/class/graphics/fb0/virtual_size)"
sleep 3
echo KVMPY-DISPLAY-READY
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
    import hashlib

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


def qemu_screen(assets: DisplayAssets, tmp: Path) -> tuple[bytes, int, int, str]:
    """(RGB bytes, width, height, serial text) of QEMU's screendump once the guest is ready."""
    sock = tmp / "qmp.sock"
    ppm = tmp / "screen.ppm"
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-m", "512", "-nodefaults", "-no-reboot",
                             "-display", "none", "-device", "VGA", "-kernel", str(assets.kernel),
                             "-initrd", str(assets.initrd), "-append", APPEND, "-serial", "stdio",
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()
    try:
        assert proc.stdout is not None
        end = time.monotonic() + BOOT_TIMEOUT
        os.set_blocking(proc.stdout.fileno(), False)
        while b"KVMPY-DISPLAY-READY" not in out:
            assert time.monotonic() < end and proc.poll() is None, out.decode(errors="replace")[-3000:]
            chunk = proc.stdout.read(65536)
            if chunk:
                out += chunk
            else:
                time.sleep(0.1)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            f = s.makefile("rw")
            f.readline()
            screendump = {"execute": "screendump", "arguments": {"filename": str(ppm)}}
            for cmd in ({"execute": "qmp_capabilities"}, screendump):
                f.write(json.dumps(cmd) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        assert "return" in reply, reply
                        break
    finally:
        proc.kill()
        proc.wait()
    data = ppm.read_bytes()
    magic, w, h, maxval, rest = data.split(maxsplit=4)
    assert magic == b"P6" and maxval == b"255"
    return rest[:int(w) * int(h) * 3], int(w), int(h), out.decode(errors="replace")


def kvmpy_screen(assets: DisplayAssets) -> tuple[bytes, int, int, str]:
    """(RGB bytes, width, height, serial text) of kvmpy's own VGA frame once the guest is ready."""
    import numpy as np

    from kvmpy.config import MachineConfig
    from kvmpy.config_devices import DeviceSpec
    from kvmpy.devices.chardev import BufferBackend
    from kvmpy.devices.vga.factory import find_display
    from kvmpy.machine import Machine

    cfg = MachineConfig(kernel=assets.kernel, initrd=assets.initrd, append=APPEND, memory=512 << 20,
                        serial="stdio", no_reboot=True, devices=(DeviceSpec(driver="VGA"),)).validate()
    console = BufferBackend()
    machine = Machine(cfg, console=console)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(machine.run(timeout=BOOT_TIMEOUT + 120)), daemon=True)
    thread.start()
    try:
        ok = console.wait_for(b"KVMPY-DISPLAY-READY", BOOT_TIMEOUT)
        text = console.output.decode(errors="replace")
        assert ok, text[-3000:]
        display = find_display(machine.board.devices.values())
        assert display is not None
        frame = display.refresh().frame
    finally:
        machine.lifecycle.request_quit(0)
        thread.join(60)
        machine.close()
    px = np.frombuffer(frame.pixels, dtype=np.uint8).reshape(frame.height, frame.stride)[:, :frame.width * 4]
    rgb = px.reshape(frame.height, frame.width, 4)[:, :, 2::-1]  # B,G,R,X -> R,G,B
    return rgb.tobytes(), frame.width, frame.height, text


@pytest.mark.kvm_full
def test_fbcon_on_bochs_drm_matches_qemus_screendump() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed")
    assets = prepare_bed_assets(build=os.environ.get("KVMPY_IN_BED") != "1")
    ours, w, h, our_text = kvmpy_screen(assets)
    tmp = Path(tempfile.mkdtemp(prefix="kd", dir="/tmp"))  # a UNIX socket cannot live on a 9p share
    try:
        theirs, qw, qh, their_text = qemu_screen(assets, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    our_edid, our_mode = guest_facts(our_text)
    their_edid, their_mode = guest_facts(their_text)
    assert their_edid and our_edid == their_edid, (our_edid, their_edid)
    assert our_mode == their_mode, (our_mode, their_mode)
    assert (w, h) == (qw, qh)
    if ours != theirs:
        import numpy as np

        a = np.frombuffer(ours, dtype=np.uint8).reshape(h, w, 3)
        b = np.frombuffer(theirs, dtype=np.uint8).reshape(h, w, 3)
        rows = np.nonzero((a != b).any(axis=(1, 2)))[0]
        pytest.fail(f"{len(rows)} rows differ (first {rows[:10].tolist()}); mode {our_mode}")
    assert any(ours[i] for i in range(0, 16 * w * 3, 3)), "the text line is missing"
