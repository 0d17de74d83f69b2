"""kvmpy-migrate end to end: two kvmpy processes, QMP on UNIX sockets, migration over TCP
(loopback, and between two network namespaces joined by a veth pair)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.guests.build import build_guest
from tests.migration.support import START_MB, SIZE_MB

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _kvmpy(tmp: Path, name: str, *extra: str, netns: str | None = None, umask: int | None = None) -> subprocess.Popen:
    kernel = build_guest("dirtier")
    cmd = [sys.executable, "-m", "kvmpy", "-enable-kvm", "-m", "64", "-display", "none", "-nodefaults",
           "-serial", f"file:{tmp / (name + '.out')}", "-kernel", str(kernel),
           "-append", f"start_mb={START_MB} size_mb={SIZE_MB}",
           "-qmp", f"unix:{tmp / (name + '.qmp')},server,wait=off", *extra]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def _qmp(path: Path, *commands: tuple[str, dict]) -> list:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    while True:  # the socket file appears at bind(), before the server listen()s
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
            break
        except ConnectionRefusedError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    f = s.makefile("rwb")
    greeting = f.readline()
    if not greeting:
        raise AssertionError(f"{path}: the QMP server closed the connection before its greeting")
    json.loads(greeting)
    out = []
    for cmd, args in (("qmp_capabilities", {}), *commands):
        f.write(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                out.append(msg)
                break
    s.close()
    return out[1:]


@contextmanager
def _reaped(procs: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Whatever happens in the block, every process in ``procs`` (as it is at the end) is gone after it."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _quit(qmp: Path, proc: subprocess.Popen) -> None:
    """``quit`` over QMP, as a user would, and wait for the process to exit."""
    _qmp(qmp, ("quit", {}))
    proc.wait(30)


def _migrate(tmp: Path, uri: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmpy.migration.migrate_cli", f"unix:{tmp / 'src.qmp'}",
                           f"unix:{tmp / 'dst.qmp'}", "--uri", uri, *extra],
                          env=ENV, capture_output=True, timeout=180)


def _wait_output(path: Path, minimum: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= minimum:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name} did not grow to {minimum} bytes")


def _run_pair(tmp: Path, src_ns: str | None = None, dst_ns: str | None = None, listen_host: str = "0",
              connect_host: str = "127.0.0.1") -> None:
    port = 47000 + os.getpid() % 1000
    listen = f"tcp:{listen_host}:{port}"
    with _reaped([_kvmpy(tmp, "src", netns=src_ns), _kvmpy(tmp, "dst", "-incoming", listen, netns=dst_ns)]) as procs:
        _wait_output(tmp / "src.out", 40)
        assert _qmp(tmp / "dst.qmp", ("query-status", {}))[0]["return"]["status"] == "inmigrate"
        run = _migrate(tmp, f"tcp:{connect_host}:{port}", "--max-bandwidth", "24M", "--max-rounds", "4")
        assert run.returncode == 0, run.stderr.decode()[-2000:]
        text = run.stdout.decode()
        assert "status: completed" in text and "destination: running" in text
        assert "round" in run.stderr.decode()  # the progress bar
        src_state, = _qmp(tmp / "src.qmp", ("query-status", {}))
        assert src_state["return"]["status"] == "postmigrate"
        size = (tmp / "dst.out").stat().st_size
        _wait_output(tmp / "dst.out", size + 5)  # serial output continues on the destination
        info, = _qmp(tmp / "src.qmp", ("query-migrate", {}))
        ram = info["return"]["ram"]
        assert info["return"]["status"] == "completed" and ram["dirty-sync-count"] >= 4
        assert {"downtime", "total-time", "setup-time"} <= set(info["return"])
        _quit(tmp / "src.qmp", procs[0])
        _quit(tmp / "dst.qmp", procs[1])


@pytest.mark.kvm_host
def test_kvmpy_migrate_between_two_processes_over_tcp(tmp_path: Path) -> None:
    _run_pair(tmp_path)


@pytest.mark.kvm_host
def test_kvmpy_migrate_fails_cleanly_when_nobody_listens(tmp_path: Path) -> None:
    with _reaped([_kvmpy(tmp_path, "src"), _kvmpy(tmp_path, "dst", "-incoming", "defer")]) as procs:
        _wait_output(tmp_path / "src.out", 40)
        run = _migrate(tmp_path, "tcp:127.0.0.1:1", "--quiet")
        assert run.returncode == 1
        assert "error" in run.stderr.decode() and "Traceback" not in run.stderr.decode()
        st, = _qmp(tmp_path / "src.qmp", ("query-status", {}))
        assert st["return"]["status"] == "running"
        bad = subprocess.run([sys.executable, "-m", "kvmpy.migration.migrate_cli", "unix:/nonexistent", "x",
                              "--uri", "tcp:1:1"], env=ENV, capture_output=True, timeout=30)
        assert bad.returncode == 1 and bad.stderr.decode().count("\n") == 1
        # -incoming defer + migrate-incoming, driven by the script.
        port = 48000 + os.getpid() % 1000
        run = _migrate(tmp_path, f"tcp:127.0.0.1:{port}", "--incoming", f"tcp:127.0.0.1:{port}", "--quiet")
        assert run.returncode == 0, run.stderr.decode()
        _quit(tmp_path / "src.qmp", procs[0])
        _quit(tmp_path / "dst.qmp", procs[1])


@pytest.mark.kvm_host
def test_bad_host_names_are_one_line_errors(tmp_path: Path) -> None:
    """The probe's ``-incoming tcp:é..:4444`` and QMP ``migrate tcp:é..:1`` ended in TypeError tracebacks."""
    bad = _kvmpy(tmp_path, "bad", "-incoming", "tcp:é..:4444")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2, err.decode()
    assert err.decode().count("\n") == 1 and "not ASCII" in err.decode(), err.decode()
    with _reaped([_kvmpy(tmp_path, "src")]) as (src,):
        _wait_output(tmp_path / "src.out", 40)
        replies = _qmp(tmp_path / "src.qmp", ("migrate", {"uri": "tcp:é..:1"}),
                       ("migrate", {"uri": "tcp:h:" + "9" * 5000}), ("query-status", {}))
        for r in replies[:2]:
            desc = r["error"]["desc"]
            assert "internal error" not in desc and "\n" not in desc and "migration" in desc, desc
        assert replies[2]["return"]["status"] == "running"
        _quit(tmp_path / "src.qmp", src)
        assert b"Traceback" not in src.stderr.read()  # type: ignore[union-attr]


@pytest.mark.kvm_host
def test_snapshot_written_by_qmp_migrate_is_0600_under_umask_000(tmp_path: Path) -> None:
    """A snapshot holds all of guest RAM and the CPU state: never world-readable (it was 0644)."""
    snap, old = tmp_path / "vm.snap", tmp_path / "old.snap"
    old.write_bytes(b"x")
    old.chmod(0o666)
    with _reaped([_kvmpy(tmp_path, "src", umask=0)]) as (src,):
        _wait_output(tmp_path / "src.out", 40)
        for path in (snap, old):
            _qmp(tmp_path / "src.qmp", ("migrate", {"uri": f"file:{path}"}))
            deadline = time.monotonic() + 60
            while True:
                info, = _qmp(tmp_path / "src.qmp", ("query-migrate", {}))
                if info["return"]["status"] in ("completed", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert info["return"]["status"] == "completed", info
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
            assert path.stat().st_size > 1 << 20
            _qmp(tmp_path / "src.qmp", ("cont", {}))  # file: leaves the source in postmigrate
        _quit(tmp_path / "src.qmp", src)


def _greeted(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(path))
    assert b'"QMP"' in s.recv(4096)
    s.sendall(b'{"execute": "qmp_capabilities"}\n')
    assert b'"return"' in s.recv(4096)
    return s


def _until(sock: socket.socket, marker: bytes) -> None:
    seen = b""
    while marker not in seen:
        data = sock.recv(4096)
        assert data, f"hung up before {marker!r}: {seen!r}"
        seen += data


@pytest.mark.kvm_host
def test_next_vm_on_the_same_qmp_path_is_never_confused_with_the_exiting_one(tmp_path: Path) -> None:
    """Issue 12 item 7b: a script that quits a pair and starts the next on the same socket paths got
    EOFError from qemu.qmp: it reached the exiting process, still listening while it shut down.

    Now a VM that has announced SHUTDOWN has already taken its socket path away, and an exiting VM
    never unlinks the socket a newer VM has put at the same path.
    """
    qmp = tmp_path / "src.qmp"
    with _reaped([_kvmpy(tmp_path, "src")]) as (first,):
        _wait_output(tmp_path / "src.out", 40)
        client = _greeted(qmp)
        with _reaped([_kvmpy(tmp_path, "src")]) as (second,):  # the next VM, same path: it replaces the socket
            deadline = time.monotonic() + 60
            inode = qmp.stat().st_ino
            while qmp.stat().st_ino == inode and time.monotonic() < deadline:
                time.sleep(0.05)
            assert qmp.stat().st_ino != inode, "the second VM never created its socket"
            client.sendall(b'{"execute": "quit"}\n')
            _until(client, b'"SHUTDOWN"')
            client.close()
            first.wait(30)
            # The first VM is gone and did not take the second one's socket with it.
            _quit(qmp, second)
            assert second.returncode == 0
        with _reaped([_kvmpy(tmp_path, "src")]) as (third,):
            inode = None
            while inode is None and time.monotonic() < deadline + 60:
                try:
                    inode = qmp.stat().st_ino
                except FileNotFoundError:
                    time.sleep(0.05)
            client = _greeted(qmp)
            client.sendall(b'{"execute": "quit"}\n')
            _until(client, b'"SHUTDOWN"')
            # Whoever has seen SHUTDOWN finds the path gone: no greeting from a VM about to hang up.
            with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
                _greeted(qmp)
            client.close()
            third.wait(30)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.mark.kvm_host
def test_migration_between_two_network_namespaces_over_veth(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    tag = f"{os.getpid() % 100000}"
    a, b = f"kvmpy-a{tag}", f"kvmpy-b{tag}"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("link", "add", f"kva{tag}", "netns", a, "type", "veth", "peer", "name", f"kvb{tag}", "netns", b)
        _ip("-n", a, "addr", "add", "10.99.0.1/24", "dev", f"kva{tag}")
        _ip("-n", b, "addr", "add", "10.99.0.2/24", "dev", f"kvb{tag}")
        for ns, dev in ((a, f"kva{tag}"), (b, f"kvb{tag}")):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        # The script runs in host A's namespace: it reaches both QMP sockets through the filesystem.
        _run_pair_in_ns(tmp_path, a, b)
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _run_pair_in_ns(tmp: Path, a: str, b: str) -> None:
    global _migrate
    plain = _migrate

    def in_a(tmp: Path, uri: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", a, sys.executable, "-m", "kvmpy.migration.migrate_cli",
                               f"unix:{tmp / 'src.qmp'}", f"unix:{tmp / 'dst.qmp'}", "--uri", uri, *extra],
                              env=ENV, capture_output=True, timeout=180)
    _migrate = in_a
    try:
        _run_pair(tmp, src_ns=a, dst_ns=b, listen_host="10.99.0.2", connect_host="10.99.0.2")
    finally:
        _migrate = plain


def _image(tmp: Path) -> Path:
    img = tmp / "shared.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(img), "16M"], check=True, capture_output=True)
    return img


@pytest.mark.kvm_host
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_qemus_incoming_destination_opens_an_image_kvmpy_is_writing(tmp_path: Path) -> None:
    """The oracle for shared-storage migration: QEMU's -incoming destination opens its images inactive (no
    lock), so it starts beside a running kvmpy that holds the image's write lock; a plain QEMU is refused."""
    img = _image(tmp_path)
    with _reaped([_kvmpy(tmp_path, "src", "-drive", f"file={img},if=virtio")]) as (src,):
        _wait_output(tmp_path / "src.out", 40)
        base = ["qemu-system-x86_64", "-display", "none", "-nodefaults", "-drive", f"file={img},if=virtio"]
        plain = subprocess.run([*base, "-S"], capture_output=True, text=True, timeout=60)
        assert plain.returncode == 1 and 'Failed to get "write" lock' in plain.stderr, plain.stderr
        qmp = tmp_path / "qemu.qmp"
        with _reaped([subprocess.Popen([*base, "-incoming", "defer", "-qmp", f"unix:{qmp},server=on,wait=off"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)]) as (dst,):
            deadline = time.monotonic() + 30
            while not qmp.exists() and dst.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert dst.poll() is None, dst.communicate()[1].decode()
            assert _qmp(qmp, ("query-status", {}))[0]["return"]["status"] == "inmigrate"
        _quit(tmp_path / "src.qmp", src)


@pytest.mark.kvm_host
def test_kvmpy_migrates_to_a_destination_on_the_same_image(tmp_path: Path) -> None:
    """As QEMU: the -incoming destination opens the image inactive (no lock) beside the running source,
    the source flushes and unlocks it at switchover, the destination locks it and re-reads the metadata."""
    img = _image(tmp_path)
    port = 49000 + os.getpid() % 1000
    with _reaped([_kvmpy(tmp_path, "src", "-drive", f"file={img},if=virtio")]) as procs:
        _wait_output(tmp_path / "src.out", 40)
        procs.append(_kvmpy(tmp_path, "dst", "-drive", f"file={img},if=virtio", "-incoming", f"tcp:127.0.0.1:{port}"))
        deadline = time.monotonic() + 30
        while not (tmp_path / "dst.qmp").exists() and procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procs[1].poll() is None, procs[1].communicate()[1].decode()
        run = _migrate(tmp_path, f"tcp:127.0.0.1:{port}", "--quiet")
        assert run.returncode == 0, run.stderr.decode()
        # As QEMU's cont: the migrated-away source must take its image back first, refused while the
        # destination holds it ...
        reply, = _qmp(tmp_path / "src.qmp", ("cont", {}))
        assert reply["error"]["desc"] == 'Failed to get "write" lock', reply
        _quit(tmp_path / "dst.qmp", procs[1])
        # ... and granted once the destination is gone.
        reply, status = _qmp(tmp_path / "src.qmp", ("cont", {}), ("query-status", {}))
        assert reply == {"return": {}} and status["return"]["status"] == "running", (reply, status)
        _quit(tmp_path / "src.qmp", procs[0])
        check = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout


@pytest.mark.kvm_host
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_kvmpy_incoming_destination_opens_an_image_qemu_is_writing(tmp_path: Path) -> None:
    """The other direction of the oracle test above: kvmpy's -incoming destination starts beside a running
    QEMU that holds the image's write lock, and holds no lock byte itself; a plain kvmpy is refused."""
    img = _image(tmp_path)
    qemu = subprocess.Popen(["qemu-system-x86_64", "-display", "none", "-nodefaults", "-drive", f"file={img},if=virtio"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while 201 not in _held(img) and time.monotonic() < deadline and qemu.poll() is None:
            time.sleep(0.05)
        qemu_held = _held(img)
        assert 201 in qemu_held, qemu.communicate()[1].decode() if qemu.poll() is not None else qemu_held
        plain = _kvmpy(tmp_path, "plain", "-drive", f"file={img},if=virtio")
        _, err = plain.communicate(timeout=60)
        assert plain.returncode != 0 and b'Failed to get "write" lock' in err, err.decode()
        with _reaped([_kvmpy(tmp_path, "dst", "-drive", f"file={img},if=virtio", "-incoming", "defer")]) as (dst,):
            assert _qmp(tmp_path / "dst.qmp", ("query-status", {}))[0]["return"]["status"] == "inmigrate"
            assert _held(img) == qemu_held  # the inactive destination adds nothing
            _quit(tmp_path / "dst.qmp", dst)
    finally:
        qemu.kill()
        qemu.wait()


def _held(path: Path) -> set[int]:
    from kvmpy.block.locking import held_bytes

    fd = os.open(path, os.O_RDONLY)
    try:
        return set(held_bytes(fd))
    finally:
        os.close(fd)


@pytest.mark.kvm_host
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_images_handed_over_by_qemu_and_by_kvmpy_are_free_for_the_other(tmp_path: Path) -> None:
    """A migration to a file ends with the source stopped and its images inactivated: QEMU's then holds only
    the consistent-read byte, kvmpy's none, so either can open the image read-write after the other's
    migration (and each takes it back with cont only while nobody else writes it)."""
    from kvmpy.block.drive import open_drive

    img = _image(tmp_path)
    qmp = tmp_path / "qemu.qmp"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-display", "none", "-nodefaults", "-drive", f"file={img},if=virtio",
                             "-qmp", f"unix:{qmp},server=on,wait=off"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _qmp(qmp, ("migrate", {"uri": f"exec:cat > {tmp_path / 'qemu.snap'}"}))  # 7.2 has no file:
        deadline = time.monotonic() + 60
        while (info := _qmp(qmp, ("query-migrate", {}))[0]["return"]).get("status") != "completed":
            assert time.monotonic() < deadline and info.get("status") != "failed", info
            time.sleep(0.1)
        assert _held(img) == {100}  # measured: an inactivated QEMU keeps only its consistent-read byte
        d = open_drive(img, "qcow2", id="after-qemu")  # QEMU let go of it: kvmpy may write
        d.write_from(0, [memoryview(b"\x5a" * 4096)])
        d.close()
    finally:
        qemu.kill()
        qemu.wait()
    with _reaped([_kvmpy(tmp_path, "src", "-drive", f"file={img},if=virtio")]) as (src,):
        _wait_output(tmp_path / "src.out", 40)
        _qmp(tmp_path / "src.qmp", ("migrate", {"uri": f"file:{tmp_path / 'kvmpy.snap'}"}))
        deadline = time.monotonic() + 60
        while _qmp(tmp_path / "src.qmp", ("query-migrate", {}))[0]["return"]["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _held(img) == set()  # kvmpy's inactivated source holds nothing
        io = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x6b 4096 4096", str(img)],
                            capture_output=True, text=True, timeout=60)  # kvmpy let go of it: QEMU may write
        assert io.returncode == 0 and "failed" not in io.stdout + io.stderr, io.stdout + io.stderr
        reply, = _qmp(tmp_path / "src.qmp", ("cont", {}))  # nobody holds it now: kvmpy takes it back
        assert reply == {"return": {}}, reply
        _quit(tmp_path / "src.qmp", src)
    check = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout
    for off, fill in ((0, 0x5A), (4096, 0x6B)):
        r = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", f"read -P {fill} {off} 4096", str(img)],
                           capture_output=True, text=True, timeout=60)
        assert "verification failed" not in r.stdout and r.returncode == 0, r.stdout
