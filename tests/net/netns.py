"""Test helpers: a throw-away network namespace with a tap moved into it, and Ethernet/IPv4/UDP frames.

The tap is opened in the test's own namespace (as kvmpy opens it) and then
moved into the namespace; its fd keeps working. Sockets for the "host side"
are created inside the namespace by a helper thread that joins it with
setns(2), so the test process itself never changes namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import threading
import uuid
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def have_netns() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun") and \
        subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


@dataclass
class NetNs:
    name: str

    @classmethod
    def create(cls) -> "NetNs":
        ns = cls(f"kvmpy-{uuid.uuid4().hex[:8]}")
        ip("netns", "add", ns.name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def run(self, *cmd: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, capture_output=True,
                              text=True, timeout=60).stdout

    def take(self, ifname: str, addr: str, peer: tuple[str, str] | None = None) -> None:
        """Move ``ifname`` in, give it ``addr`` (CIDR), bring it up, and a static neighbour (ip, mac)."""
        ip("link", "set", ifname, "netns", self.name)
        # no IPv6 on the link: its neighbour discovery would put frames the tests do not expect in the queues
        self.run("sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1")
        self.run("ip", "addr", "add", addr, "dev", ifname)
        self.run("ip", "link", "set", ifname, "up")
        if peer is not None:
            self.run("ip", "neigh", "replace", peer[0], "lladdr", peer[1], "dev", ifname, "nud", "permanent")

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket that lives in this namespace."""
        out: list = []

        def make() -> None:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    out.append(OSError(ctypes.get_errno(), "setns"))
                    return
                out.append(socket.socket(family, kind))
            finally:
                os.close(fd)

        t = threading.Thread(target=make)
        t.start()
        t.join()
        if isinstance(out[0], Exception):
            raise out[0]
        return out[0]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def mac_bytes(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, payload: bytes,
              partial: bool = False) -> tuple[bytes, int]:
    """An Ethernet/IPv4/UDP frame; with ``partial`` the UDP checksum holds only the pseudo-header sum
    (what a driver leaves for checksum offload). Returns (frame, offset of the UDP header)."""
    udp_len = 8 + len(payload)
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    iph = iph[:10] + struct.pack("!H", 0xFFFF - _csum(iph)) + iph[12:]
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    if partial:
        c = _csum(pseudo)  # not inverted: the device (or the host) finishes it
    else:
        c = 0xFFFF - _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    eth = mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x00"
    return eth + iph + udp, 14 + 20


def parse_udp(frame: bytes) -> tuple[str, str, int, int, bytes] | None:
    """(src ip, dst ip, sport, dport, payload) of an Ethernet/IPv4/UDP frame, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0xF) * 4
    sport, dport, length = struct.unpack_from("!HHH", frame, 14 + ihl)
    payload = frame[14 + ihl + 8:14 + ihl + length]
    return socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), sport, dport, payload
