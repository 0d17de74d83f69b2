"""Interop with QEMU 7.2's own -netdev stream and socket: QEMU as a hub between a kvmpy client and server.

QEMU runs two stream netdevs on one hub: ``a`` is a server our client
connects to, ``b`` a client that connects to our server. A frame our client
sends is parsed by QEMU (our framing -> QEMU), forwarded by the hub and
written out on ``b`` (QEMU's framing -> our server), and the other way round.
A filter-dump on ``a`` records what QEMU itself parsed, as a third witness.
The same runs with QEMU's older ``-netdev socket,listen=/connect=`` (inet).
"""

from __future__ import annotations

import random
import socket
import struct
import shutil
import subprocess
import time

import pytest

from kvmpy.net.netdev import build_netdev

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _pcap_frames(data: bytes) -> list[bytes]:
    """The packets of a classic little-endian pcap file (what filter-dump writes); scapy's reader cuts at 64 KiB."""
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and linktype == 1  # microsecond timestamps, Ethernet
    frames, pos = [], 24
    while pos < len(data):
        _sec, _usec, caplen, _length = struct.unpack_from("<IIII", data, pos)
        frames.append(data[pos + 16:pos + 16 + caplen])
        pos += 16 + caplen
    return frames


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _setup(kind: str, tmp_path):
    """(our server, our client props, QEMU's two netdevs, a readiness check) for ``kind``."""
    if kind == "stream":
        a_path, b_path = tmp_path / "a.sock", tmp_path / "b.sock"
        server = build_netdev("stream", "srv", [("server", "on"), ("addr.type", "unix"), ("addr.path", str(b_path))])
        return (server, [("addr.type", "unix"), ("addr.path", str(a_path))],
                [f"stream,id=a,server=on,addr.type=unix,addr.path={a_path}",
                 f"stream,id=b,server=off,addr.type=unix,addr.path={b_path}"], a_path.exists)
    server = build_netdev("socket", "srv", [("listen", "127.0.0.1:0")])
    port_a = _free_port()
    # -netdev socket has no reconnect= in QEMU; ours retries until QEMU listens, so no probe steals its one slot.
    return (server, [("addr.type", "inet"), ("addr.host", "127.0.0.1"), ("addr.port", str(port_a)),
                     ("reconnect", "1")],
            [f"socket,id=a,listen=127.0.0.1:{port_a}", f"socket,id=b,connect=127.0.0.1:{server.endpoint.port}"],
            lambda: True)


@pytest.mark.parametrize("kind", ["stream", "socket"])
def test_frames_cross_qemu_netdevs_both_ways(kind, tmp_path, collector_factory) -> None:
    pcap = tmp_path / "a.pcap"
    server, client_props, qemu_netdevs, qemu_ready = _setup(kind, tmp_path)
    client = build_netdev("stream", "cli", client_props)
    srx, crx = collector_factory(), collector_factory()
    server.start(srx)
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",  # no -S: QEMU holds packets while stopped
         "-netdev", qemu_netdevs[0], "-netdev", "hubport,id=ha,hubid=0,netdev=a",
         "-netdev", qemu_netdevs[1], "-netdev", "hubport,id=hb,hubid=0,netdev=b",
         "-object", f"filter-dump,id=fa,netdev=a,file={pcap},maxlen=69632"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(qemu_ready, 10, "QEMU's listening socket")
        assert server.wait_connected(10), "QEMU's client netdev did not connect to our server"
        client.start(crx)
        assert client.wait_connected(10)
        rng = random.Random(7)
        sizes = [60, 61, 1514, 9000, 65550] + [rng.randint(42, 1514) for _ in range(100)]
        outbound = [rng.randbytes(n) for n in sizes]
        for frame in outbound:
            client.send(frame)
            time.sleep(0.001)  # QEMU's hub has no flow control towards a slow stream peer
        assert srx.take(len(outbound), timeout=10) == outbound
        inbound = [rng.randbytes(rng.randint(42, 1514)) for _ in range(50)]
        for frame in inbound:
            server.send(frame)
        assert crx.take(len(inbound), timeout=10) == inbound
        dumped = _pcap_frames(pcap.read_bytes())
        # filter-dump on "a" sees both directions: what QEMU parsed from our client, then what it sent to it.
        assert dumped[:len(outbound)] == outbound
        assert dumped[len(outbound):] == inbound
    finally:
        client.close()
        qemu.terminate()
        _, err = qemu.communicate(timeout=10)
        server.close()
    assert b"oversized" not in err and b"error" not in err.lower(), err
