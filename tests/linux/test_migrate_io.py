"""Migration under I/O (issue 13, item 6): a Linux guest writing its disk and receiving a TCP stream migrates
from one kvmpy process to another with both intact.

Both processes run the same command line on the same qcow2 file (shared
storage, as QEMU users migrate) - with ``file.locking=off`` for now: QEMU's
destination opens its images inactive, without locks, until the migration
completes, kvmpy's opens them at start and so is refused the source's
write lock (tests/migration/test_migrate_cli.py holds that case as an
expected failure). Each has a virtio-blk root disk and virtio-net on
``-netdev stream`` to a hub in the test. The hub joins every stream client
(source and destination alike, as a switch port each) to a tap in L1, so L1's
own kernel is the guest's TCP peer and a connection survives the move.

In the guest, while the source runs: a writer loop stores random files on
its ext4 root and records their SHA-256, and wget receives an HTTP stream
from L1 that the test holds open until the migration has completed. The
destination, once running, must see wget finish with every byte (count and
SHA-256 equal to what L1 sent), re-read every written file from the disk
after dropping the page cache (``sha256sum -c``), power off cleanly; then
``qemu-img check`` must find the image consistent.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvmpy.migration.migrate_cli import QmpClient
from tests.linux.guest_process import GuestProcess
from tests.linux.rootdisk import prepare_root_disk
from tests.linux.test_disk_and_net import REPO, done, needs_virtio_net, workdir_for

prepare_bed_assets = prepare_root_disk  # the conftest builds it on the host before the bed boots

DRIVE = "file=disk.qcow2,if=virtio,file.locking=off"  # see the module's docstring
BOOT_TIMEOUT = 300.0
CMD_TIMEOUT = 180.0
MIGRATE_TIMEOUT = 300.0
TAP = "kvmpymig0"
HOST_IP, GUEST_IP = "10.13.0.1", "10.13.0.2"
CHUNK = 64 << 10
BEFORE, AFTER = 4 << 20, 4 << 20  # bytes sent at full speed before the trickle and after the migration

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI = 0x0002, 0x1000


class StreamHub:
    """A hub: frames from any -netdev stream client (4-byte big-endian length each) or from an L1 tap go to all
    the others. Each client has an output queue; a frame that would take it past QUEUE_LIMIT is dropped, as a
    busy switch port drops it (TCP resends), so a client that does not read (a destination still waiting
    for its migration) never stalls the others or loses its framing."""

    QUEUE_LIMIT = 1 << 20

    def __init__(self, path: Path) -> None:
        self.tap = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(self.tap, _TUNSETIFF, struct.pack("16sH", TAP.encode(), _IFF_TAP | _IFF_NO_PI))
        for cmd in (["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP], ["ip", "link", "set", TAP, "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.inbuf: dict[socket.socket, bytearray] = {}
        self.outbuf: dict[socket.socket, bytearray] = {}
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.sel.register(self.tap, selectors.EVENT_READ)
        self.stop = threading.Event()
        self.connections = 0
        self.dropped = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _flush(self, c: socket.socket) -> None:
        out = self.outbuf[c]
        if out:
            try:
                del out[:c.send(out)]
            except BlockingIOError:
                pass
            except OSError:
                self._drop(c)
                return
        self.sel.modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))

    def _to_clients(self, frame: bytes, source: socket.socket | None) -> None:
        for c in list(self.outbuf):
            if c is source:
                continue
            if len(self.outbuf[c]) + len(frame) + 4 > self.QUEUE_LIMIT:
                self.dropped += 1
                continue
            self.outbuf[c] += struct.pack(">I", len(frame)) + frame
            self._flush(c)

    def _drop(self, c: socket.socket) -> None:
        if c in self.outbuf:
            self.sel.unregister(c)
            del self.outbuf[c], self.inbuf[c]
            c.close()

    def _receive(self, c: socket.socket) -> None:
        try:
            data = c.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        buf = self.inbuf[c]
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + (n := struct.unpack_from(">I", buf)[0]):
            frame = bytes(buf[4:4 + n])
            del buf[:4 + n]
            try:
                os.write(self.tap, frame)
            except OSError:
                pass
            self._to_clients(frame, c)

    def _loop(self) -> None:
        while not self.stop.is_set():
            for key, events in self.sel.select(0.2):
                obj = key.fileobj
                if obj is self.listener:
                    c, _ = self.listener.accept()
                    c.setblocking(False)
                    self.inbuf[c], self.outbuf[c] = bytearray(), bytearray()
                    self.connections += 1
                    self.sel.register(c, selectors.EVENT_READ)
                elif obj == self.tap:
                    try:
                        frame = os.read(self.tap, 65536)
                    except BlockingIOError:
                        continue
                    self._to_clients(frame, None)
                else:
                    assert isinstance(obj, socket.socket)
                    if events & selectors.EVENT_WRITE and obj in self.outbuf:
                        self._flush(obj)
                    if events & selectors.EVENT_READ and obj in self.inbuf:
                        self._receive(obj)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for c in list(self.outbuf):
            self._drop(c)
        self.listener.close()
        os.close(self.tap)


class HeldStream:
    """An HTTP server on L1's tap address whose one response spans a migration: BEFORE bytes at once, then a
    chunk every 0.1 s until ``migrated`` is set, then AFTER bytes; it records what it sent."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.migrated = threading.Event()
        self.sent = 0
        self.digest = hashlib.sha256()
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                rng = random.Random(6)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()

                def put(n: int) -> None:
                    data = rng.randbytes(n)
                    self.wfile.write(data)
                    stream.digest.update(data)
                    stream.sent += n

                for _ in range(BEFORE // CHUNK):
                    put(CHUNK)
                stream.started.set()
                while not stream.migrated.wait(0.1):
                    put(CHUNK // 4)
                for _ in range(AFTER // CHUNK):
                    put(CHUNK)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self.server = http.server.ThreadingHTTPServer((HOST_IP, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.migrated.set()
        self.server.shutdown()


GUEST_START = (
    f"ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; touch /run/go; "
    # the writer: 512 KiB random files and their checksums, synced every fourth file
    "(i=0; while [ -e /run/go ]; do dd if=/dev/urandom of=/root/w$i bs=64k count=8 2>/dev/null; "
    "sha256sum /root/w$i >> /root/sums; i=$((i+1)); [ $((i % 4)) = 0 ] && sync; done; echo WRITER-STOPPED) & "
    "(wget -q -O /run/recv http://{host}:{port}/stream; echo \"WGET-DONE-$((6*7)) rc=$?\") & "
    "sleep 1; echo \"STARTED-$((6*7)) files=$(cat /root/sums 2>/dev/null | wc -l)\"\n")
GUEST_VERIFY = ("rm /run/go; wait; sync; echo 3 > /proc/sys/vm/drop_caches; sha256sum -c -s /root/sums; "
                "echo \"VERIFY-$((6*7)) rc=$? files=$(wc -l < /root/sums)\"; "
                "echo \"RECV $(wc -c < /run/recv) $(sha256sum /run/recv)\"" + done("RECV"))


def _vmm(work: Path, name: str, hub: Path, *extra: str) -> GuestProcess:
    argv = [sys.executable, "-m", "kvmpy", "-enable-kvm", "-m", "512M", "-smp", "2", "-kernel", "vmlinuz",
            "-initrd", "initrd.gz", "-append", "root=/dev/vda console=ttyS0", "-drive", DRIVE,
            "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={hub}",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56", "-nographic",
            "-qmp", f"unix:{work / (name + '.qmp')},server=on,wait=off", *extra]
    return GuestProcess(argv, cwd=work, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _qmp(work: Path, name: str) -> QmpClient:
    path = work / f"{name}.qmp"
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return QmpClient(f"unix:{path}", timeout=60)


@pytest.mark.kvm_full
@needs_virtio_net
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="needs /dev/net/tun")
def test_guest_writing_its_disk_and_receiving_tcp_migrates_with_both_intact(root_disk, tmp_path):
    work = workdir_for(tmp_path, root_disk, "vm")  # one image for both: shared storage
    hub_path = tmp_path / "hub.sock"
    hub = StreamHub(hub_path)
    stream = HeldStream()
    src = dst = None
    try:
        src = _vmm(work, "src", hub_path)
        src.expect(r"ROOTFS-UP /dev/vda ext4 rw", BOOT_TIMEOUT)
        port = 47500 + os.getpid() % 500
        dst = _vmm(work, "dst", hub_path, "-incoming", f"tcp:127.0.0.1:{port}")
        dst_qmp = _qmp(work, "dst")
        assert dst_qmp.execute("query-status")["status"] == "inmigrate"
        src.send(GUEST_START.replace("{host}", HOST_IP).replace("{port}", str(stream.port)))
        src.expect(r"STARTED-42 files=\d+", CMD_TIMEOUT)
        if not stream.started.wait(CMD_TIMEOUT):
            src.send("ip -s link show eth0; cat /proc/net/snmp | grep -E '^(Ip|Tcp):'; echo DIAG-$((6*7))\n")
            src.expect("DIAG-42", CMD_TIMEOUT)
            raise AssertionError(f"the guest's wget got {stream.sent} of the first {BEFORE} bytes; hub: "
                                 f"{hub.connections} connections, {hub.dropped} frames dropped; "
                                 f"guest: {src.text()[-2500:]}")
        src_qmp = _qmp(work, "src")
        # The writer dirties the page cache without pause; in the bed that may outrun the link, so
        # switch over after a few rounds rather than wait for convergence (kvmpy's x-max-rounds).
        src_qmp.execute("migrate-set-parameters", **{"x-max-rounds": 5})
        begin = time.monotonic()
        src_qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        while (info := src_qmp.execute("query-migrate"))["status"] not in ("completed", "failed", "cancelled"):
            assert time.monotonic() - begin < MIGRATE_TIMEOUT, info
            time.sleep(0.5)
        assert info["status"] == "completed", info
        took = time.monotonic() - begin
        stream.migrated.set()
        assert dst_qmp.execute("query-status")["status"] == "running"
        src_qmp.execute("quit")  # as a management tool does once the destination runs
        src.wait(60)
        # TCP resumes after its retransmission timer, backed off over the switchover: in a loaded bed the
        # rest of the stream has taken over 100 s
        wget = dst.expect(r"WGET-DONE-42 rc=(\d+)", 2 * CMD_TIMEOUT)
        dst.send(GUEST_VERIFY)
        verify = dst.expect(r"VERIFY-42 rc=(\d+) files=(\d+)", CMD_TIMEOUT)
        recv = dst.expect(r"RECV (\d+) ([0-9a-f]{64})", CMD_TIMEOUT)
        dst.expect(r"RECV-42 rc=\d+", CMD_TIMEOUT)
        dst.send("poweroff -f\n")
        status = dst.wait(CMD_TIMEOUT)
    finally:
        stream.close()
        for p in (src, dst):
            if p is not None:
                p.close()
        hub.close()
    out = dst.text()
    print(f"migration under I/O: {took:.1f} s, downtime {info.get('downtime')} ms, "
          f"{int(verify.group(2))} files verified, {stream.sent} bytes streamed, hub connections {hub.connections}, "
          f"frames dropped by the hub {hub.dropped}")
    assert status == 0, out[-3000:]
    assert wget.group(1) == b"0", out[-3000:]
    assert verify.group(1) == b"0" and int(verify.group(2)) > 0, out[-3000:]
    assert (int(recv.group(1)), recv.group(2).decode()) == (stream.sent, stream.digest.hexdigest()), out[-3000:]
    check = subprocess.run(["qemu-img", "check", str(work / "disk.qcow2")], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
