"""The tap netdev against a real tap moved into a throw-away network namespace (the host runs as root)."""

from __future__ import annotations

import os
import queue
import struct
import time

import pytest

from kvmpy.net.tap import NetdevError, TapBackend, TapOptions
from tests.net.netns import NetNs, have_netns, parse_udp, udp_frame

GUEST_MAC, GUEST_IP, HOST_IP = "52:54:00:12:34:56", "10.77.0.2", "10.77.0.1"
HDR = struct.Struct("<BBHHHHH")
NEEDS_CSUM = 1

needs_netns = pytest.mark.skipif(not have_netns(), reason="needs root, /dev/net/tun and ip netns")


# ---- options ----------------------------------------------------------------------
@pytest.mark.parametrize("opts, message", [
    ({"ifname": "t0"}, "'id' is missing"),
    ({"id": "n", "br": "br0"}, "qemu-bridge-helper"),
    ({"id": "n", "helper": "/x"}, "not supported"),
    ({"id": "n", "queues": "2"}, "multiqueue"),
    ({"id": "n", "fd": "3", "ifname": "t0"}, "invalid with fd="),
    ({"id": "n", "fd": "x"}, "file descriptor number"),
    ({"id": "n", "ifname": "a" * 16}, "not a valid interface name"),
    ({"id": "n", "ifname": "a/b"}, "not a valid interface name"),
    ({"id": "n", "vhost": "maybe"}, "expects 'on' or 'off'"),
    ({"id": "n", "vhost": "on", "vnet_hdr": "off"}, "requires vnet_hdr=on"),
    ({"id": "n", "colour": "red"}, "Invalid parameter 'colour'"),
])
def test_bad_options_are_one_clear_error(opts, message) -> None:
    with pytest.raises(NetdevError, match=message):
        TapOptions.parse(opts)


def test_option_defaults_follow_qemu() -> None:
    o = TapOptions.parse({"id": "n0"})
    assert (o.script, o.downscript, o.vhost, o.vnet_hdr) == ("/etc/qemu-ifup", "/etc/qemu-ifdown", False, None)
    o = TapOptions.parse({"id": "n0", "ifname": "tap5", "script": "no", "downscript": "no", "vhost": "on"})
    assert (o.ifname, o.script, o.downscript, o.vhost) == ("tap5", None, None, True)
    assert TapOptions.parse({"id": "n0", "vhostforce": "on"}).vhost


# ---- a real tap -------------------------------------------------------------------
@pytest.fixture
def tap_in_ns():
    ns = NetNs.create()
    name = f"kt{os.getpid() % 100000}"
    tap = TapBackend.from_options({"id": "n0", "ifname": name, "script": "no", "downscript": "no"})
    try:
        ns.take(name, f"{HOST_IP}/24", (GUEST_IP, GUEST_MAC))
        yield tap, ns
    finally:
        tap.close()
        ns.delete()


def _collect(tap: TapBackend, accept=lambda f: True) -> "queue.Queue[bytes]":
    got: "queue.Queue[bytes]" = queue.Queue()

    def receive(frame: bytes) -> bool:
        if parse_udp(frame[12:]) is None:
            return True  # IPv6 neighbour discovery and the like
        got.put(frame)
        return accept(frame)

    tap.start(receive)
    return got


def _host_mac(ns: NetNs, name: str) -> str:
    return ns.run("cat", f"/sys/class/net/{name}/address").strip()


@needs_netns
def test_frames_both_ways_with_vnet_header(tap_in_ns) -> None:
    tap, ns = tap_in_ns
    assert tap.vnet_hdr and tap.info() == f"tap: ifname={tap.ifname},script=no,downscript=no"
    got = _collect(tap)
    host = ns.socket()
    host.bind((HOST_IP, 7000))
    host.settimeout(5)
    host.sendto(b"to the guest", (GUEST_IP, 7001))
    frame = got.get(timeout=5)
    flags, gso, *_ = HDR.unpack_from(frame)
    assert gso == 0 and parse_udp(frame[12:]) == (HOST_IP, GUEST_IP, 7000, 7001, b"to the guest")
    # and back: a complete frame, then one whose checksum the host has to finish (NEEDS_CSUM)
    hmac = _host_mac(ns, tap.ifname)
    full, _ = udp_frame(GUEST_MAC, hmac, GUEST_IP, HOST_IP, 7001, 7000, b"from the guest")
    tap.send(bytes(12) + full)
    assert host.recvfrom(100) == (b"from the guest", (GUEST_IP, 7001))
    partial, l4 = udp_frame(GUEST_MAC, hmac, GUEST_IP, HOST_IP, 7001, 7000, b"checksum offloaded", partial=True)
    tap.send(HDR.pack(NEEDS_CSUM, 0, 0, 0, l4, 6, 0) + partial)
    assert host.recvfrom(100) == (b"checksum offloaded", (GUEST_IP, 7001))
    # the same frame without the offload flag carries a wrong checksum: the host drops it
    tap.send(bytes(12) + partial)
    tap.send(bytes(12) + full)
    assert host.recvfrom(100)[0] == b"from the guest"
    assert tap.stats.tx_frames == 4 and tap.stats.tx_dropped == 0


@needs_netns
def test_guest_checksum_offload_reaches_the_header(tap_in_ns) -> None:
    tap, ns = tap_in_ns
    tap.set_offloads(csum=True, tso4=True, tso6=True, ecn=True, ufo=False)
    assert tap.offloads == 0x0F
    got = _collect(tap)
    host = ns.socket()
    host.sendto(b"x" * 100, (GUEST_IP, 7001))
    frame = got.get(timeout=5)
    flags, gso, hdr_len, gso_size, start, offset, _ = HDR.unpack_from(frame)
    assert flags & NEEDS_CSUM and (start, offset) == (34, 6)  # the UDP checksum is left to the "guest"
    # a large write becomes a single frame only when the guest takes GSO; UDP is not segmented for it,
    # so the frame size stays below the MTU here
    assert len(frame) - 12 <= 1514


@needs_netns
def test_a_full_device_holds_the_frame_until_rx_ready(tap_in_ns) -> None:
    tap, ns = tap_in_ns
    room = {"open": False}
    got = _collect(tap, accept=lambda f: room["open"])
    host = ns.socket()
    host.sendto(b"held", (GUEST_IP, 7001))
    first = got.get(timeout=5)
    time.sleep(0.2)
    assert got.empty(), "the reader retried without rx_ready"
    room["open"] = True
    tap.rx_ready()
    again = got.get(timeout=5)
    assert again == first and parse_udp(first[12:])[4] == b"held"
    host.sendto(b"next", (GUEST_IP, 7001))
    assert parse_udp(got.get(timeout=5)[12:])[4] == b"next"


@needs_netns
def test_link_down_drops_both_ways(tap_in_ns) -> None:
    tap, ns = tap_in_ns
    got = _collect(tap)
    host = ns.socket()
    host.bind((HOST_IP, 7000))
    host.settimeout(0.5)
    tap.set_link(False)
    host.sendto(b"lost", (GUEST_IP, 7001))
    frame, _ = udp_frame(GUEST_MAC, _host_mac(ns, tap.ifname), GUEST_IP, HOST_IP, 7001, 7000, b"lost too")
    tap.send(bytes(12) + frame)
    deadline = time.time() + 5
    while tap.stats.rx_dropped == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert got.empty() and tap.stats.rx_dropped >= 1 and tap.stats.tx_dropped == 1
    with pytest.raises(OSError):
        host.recvfrom(100)
    tap.set_link(True)
    host.sendto(b"back", (GUEST_IP, 7001))
    assert parse_udp(got.get(timeout=5)[12:])[4] == b"back"


@needs_netns
def test_script_gets_the_interface_name(tmp_path) -> None:
    log = tmp_path / "log"
    up, down = tmp_path / "up", tmp_path / "down"
    up.write_text(f"#!/bin/sh\necho up $1 >> {log}\n")
    down.write_text(f"#!/bin/sh\necho down $1 >> {log}\n")
    up.chmod(0o755)
    down.chmod(0o755)
    name = f"ks{os.getpid() % 100000}"
    tap = TapBackend.from_options({"id": "n0", "ifname": name, "script": str(up), "downscript": str(down)})
    tap.close()
    assert log.read_text() == f"up {name}\ndown {name}\n"
    bad = tmp_path / "fails"
    bad.write_text("#!/bin/sh\nexit 3\n")
    bad.chmod(0o755)
    with pytest.raises(NetdevError, match="failed with status 3"):
        TapBackend.from_options({"id": "n0", "ifname": name, "script": str(bad), "downscript": "no"})
    with pytest.raises(NetdevError, match="does not exist"):
        TapBackend.from_options({"id": "n0", "ifname": name, "script": str(tmp_path / "none")})


@needs_netns
def test_fd_adopts_an_open_tap() -> None:
    name = f"kf{os.getpid() % 100000}"
    first = TapBackend.from_options({"id": "a", "ifname": name, "script": "no", "downscript": "no"})
    try:
        fd = os.dup(first.fd)
        adopted = TapBackend.from_options({"id": "b", "fd": str(fd)})
        assert adopted.ifname == name and adopted.vnet_hdr and adopted.info() == f"tap: fd={fd}"
        adopted.close()
    finally:
        first.close()
    with pytest.raises(NetdevError, match="not an open tap"):
        TapBackend.from_options({"id": "c", "fd": "0"})


def test_vhost_on_without_vhost_net_is_a_clear_error() -> None:
    if os.path.exists("/dev/vhost-net") or not have_netns():
        pytest.skip("needs a host without /dev/vhost-net (vhost is tested in the bed)")
    with pytest.raises(NetdevError, match="vhost-net requested but could not be initialized"):
        TapBackend.from_options({"id": "n", "ifname": f"kv{os.getpid() % 100000}", "script": "no",
                                 "downscript": "no", "vhost": "on"})
