"""A Linux guest on virtio-serial: an hvc0 login and the real QEMU guest agent on a named port, under kvmpy and,
as the oracle, under QEMU, with the same kernel, initramfs and device options.

The initramfs holds busybox, the virtio-pci and virtio_console modules, Debian's
``qemu-ga`` with the libraries it links (taken from the host, which runs the
same Debian), and an /init that starts a getty on hvc0 and the agent on the port
named org.qemu.guest_agent.0 (found through /sys/class/virtio-ports, as udev
would name it). Both ends are unix sockets (-chardev socket,server=on).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmpy.tools.fetch import cache_root, fetch_busybox, fetch_kernel

QGA_NAME = "org.qemu.guest_agent.0"
MODULES = ["virtio_pci", "virtio_console"]
INIT = f"""#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /root /var/run
while read -r m; do insmod "/$m" || echo "KVMPY-TEST insmod $m failed"; done < /etc/kvmpy-modules
for i in $(seq 100); do [ -e /dev/hvc0 ] && [ -n "$(cat /sys/class/virtio-ports/*/name 2>/dev/null)" ] && break; sleep 0.1; done
for p in /sys/class/virtio-ports/*; do
    name=$(cat "$p/name" 2>/dev/null)
    echo "KVMPY-TEST port ${{p##*/}} name=[$name]"
    [ "$name" = {QGA_NAME} ] && qga=/dev/${{p##*/}}
done
if [ -n "$qga" ]; then
    qemu-ga -m virtio-serial -p "$qga" -t /tmp -f /tmp/qga.pid -d && echo "KVMPY-TEST qga started on $qga"
fi
(while true; do setsid getty -L 0 hvc0 vt100; done) &
echo "KVMPY-TEST ready hvc0=$([ -e /dev/hvc0 ] && echo yes || echo no)"
exec sh
"""


@dataclass(frozen=True)
class Assets:
    kernel: Path
    initrd: Path


def qga_files() -> list[tuple[Path, str]]:
    """qemu-ga from Debian's package and every library it loads (from the host, the same Debian)."""
    root = cache_root() / "qemu-guest-agent"
    binary = root / "usr/sbin/qemu-ga"
    if not binary.exists():  # only on the host: L1 has no network (and sees the host's cache read-only)
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["apt-get", "download", "qemu-guest-agent"], cwd=tmp, check=True, capture_output=True)
        deb = next(tmp.glob("qemu-guest-agent_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(tmp / "root")], check=True, capture_output=True)
        os.replace(tmp / "root", root)
        shutil.rmtree(tmp, ignore_errors=True)
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = [Path(m.group(1)) for m in re.finditer(r"(/\S+) \(0x", out)]
    files = [(binary, "usr/sbin/qemu-ga")]
    for lib in libs:
        files.append((lib.resolve(), str(lib).lstrip("/")))
    return files


def prepare_assets(build: bool = True) -> Assets:
    kernel = fetch_kernel("cloud-amd64")
    busybox = fetch_busybox()
    files = qga_files()
    key = hashlib.sha256(INIT.encode() + repr((str(kernel.modules_dir), MODULES, str(busybox),
                                               [(str(f), f.stat().st_size) for f, _ in files])).encode())
    out_dir = cache_root() / "virtio-serial-tests"
    initrd = out_dir / f"initrd-{key.hexdigest()[:16]}.gz"
    if not initrd.exists():
        if not build:
            raise FileNotFoundError(f"{initrd} was not prepared on the host")
        from kvmpy.tools.initrd import main as initrd_main

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "init.sh").write_text(INIT)
        (out_dir / "passwd").write_text("root::0:0:root:/root:/bin/sh\n")
        extra = [(out_dir / "passwd", "etc/passwd"), (Path("/etc/os-release").resolve(), "etc/os-release")]
        args = ["-o", str(initrd), "--busybox", str(busybox), "--init", str(out_dir / "init.sh"),
                "--modules-dir", str(kernel.modules_dir)]
        for m in MODULES:
            args += ["-m", m]
        for src, dest in files + extra:
            args += ["--file", f"{src}:{dest}"]
        if initrd_main(args) != 0:
            raise RuntimeError("kvmpy initrd failed")
    return Assets(kernel.vmlinuz, initrd)


class Agent:
    """A QMP-style JSON client for the guest agent's socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def call(self, command: str) -> dict:
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("guest agent socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def device_args(sockdir: Path) -> list[str]:
    return ["-chardev", f"socket,path={sockdir / 'qga.sock'},server=on,wait=off,id=qga0",
            "-chardev", f"socket,path={sockdir / 'con.sock'},server=on,wait=off,id=con0",
            "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=con0",
            "-device", f"virtserialport,chardev=qga0,name={QGA_NAME}"]


BOOT_TIMEOUT = 300.0
READY = re.compile(r"KVMPY-TEST ready hvc0=(yes|no)\r?\n")
STEP_TIMEOUT = 120.0


def prepare_bed_assets() -> None:
    """Run by tests/linux/conftest.py on the host before the bed boots."""
    prepare_assets()


@pytest.fixture(scope="module")
def assets() -> Assets:
    try:
        return prepare_assets(build=os.environ.get("KVMPY_IN_BED") != "1")
    except Exception as exc:
        pytest.fail(f"virtio-serial guest assets are unavailable: {exc}", pytrace=False)


def wait_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.1)


def exercise(sockdir: Path) -> dict:
    """Ask the guest agent what the issue asks, and log in on hvc0; returns what was seen."""
    seen: dict = {}
    agent = Agent(sockdir / "qga.sock", STEP_TIMEOUT)
    try:
        seen["ping"] = agent.call("guest-ping")
        info = agent.call("guest-info")["return"]
        seen["info"] = {"version": info["version"], "has_ping": any(c["name"] == "guest-ping"
                                                                     for c in info["supported_commands"])}
        seen["osinfo"] = agent.call("guest-get-osinfo")["return"]
    finally:
        agent.sock.close()
    con = socket.socket(socket.AF_UNIX)
    con.settimeout(STEP_TIMEOUT)
    con.connect(str(sockdir / "con.sock"))
    try:
        out = b""

        def until(text: bytes, send: bytes | None = None) -> None:
            nonlocal out
            deadline = time.monotonic() + STEP_TIMEOUT
            while text not in out:
                if send is not None:
                    con.sendall(send)
                try:
                    chunk = con.recv(4096)
                except socket.timeout:
                    chunk = b""
                if not chunk and time.monotonic() > deadline:
                    raise TimeoutError(f"hvc0: no {text!r} in {out[-300:]!r}")
                out += chunk
                send = None if chunk else send

        con.settimeout(5)
        until(b"login:", b"\r")          # getty on hvc0 (a newline wakes it if it prompted before we came)
        con.sendall(b"root\r")
        until(b"# ")
        con.sendall(b"echo HVC-$((6*7)) $(tty)\r")
        until(b"HVC-42 /dev/hvc0")
        seen["hvc0"] = True
    finally:
        con.close()
    return seen


def run_qemu(assets: Assets, sockdir: Path) -> dict:
    log = sockdir / "serial.log"
    cmd = ["qemu-system-x86_64", "-M", "pc", "-enable-kvm", "-m", "512", "-nodefaults", "-display", "none",
           "-no-reboot", "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
           "-append", "console=ttyS0 quiet panic=-1", "-serial", f"file:{log}", *device_args(sockdir)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while b"KVMPY-TEST ready" not in (log.read_bytes() if log.exists() else b""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"QEMU did not boot the guest: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
        return exercise(sockdir)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.kvm_full
def test_hvc0_login_and_guest_agent_as_under_qemu(assets, tmp_path) -> None:
    import kvmpy

    ours = tmp_path / "kvmpy"
    ours.mkdir()
    with kvmpy.VM(assets.kernel, initrd=assets.initrd, memory="512M", no_reboot=True, process=True,
                  append="console=ttyS0 quiet panic=-1", extra_args=device_args(ours)) as vm:
        # the whole line, to its end: ``\w+`` alone matches a partly arrived "hvc0=y"
        ready = vm.console.expect(READY, timeout=BOOT_TIMEOUT)
        boot = vm.console.output
        seen = exercise(ours)
        vm.console.send("poweroff -f\n")
        assert vm.wait(timeout=STEP_TIMEOUT) == 0
    assert ready.group(1) == "yes", boot[-3000:]
    assert re.search(rf"port vport\dp1 name=\[{re.escape(QGA_NAME)}\]", boot), boot[-3000:]
    assert seen["ping"] == {"return": {}} and seen["info"]["has_ping"] and seen["hvc0"], seen
    theirs = tmp_path / "qemu"
    theirs.mkdir()
    assert run_qemu(assets, theirs) == seen  # the same answers, word for word, as under QEMU
