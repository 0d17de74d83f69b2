"""-netdev user through a real passt: DHCP, ARP, TCP to the host, hostfwd, process lifetime, errors.

The test plays the guest's NIC: it sends Ethernet frames built with scapy
through UserBackend.send and reads what passt answers from the receive
callback.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from kvmpy.errors import ConfigError
from kvmpy.net.netdev import build_netdev
from kvmpy.net.user import PasstProcess, UserBackend

pytestmark = pytest.mark.skipif(shutil.which("passt") is None, reason="needs passt (Debian package 'passt')")

scapy_all = pytest.importorskip("scapy.all")
Ether, IP, UDP, TCP, ARP, BOOTP, DHCP = (scapy_all.Ether, scapy_all.IP, scapy_all.UDP, scapy_all.TCP,
                                         scapy_all.ARP, scapy_all.BOOTP, scapy_all.DHCP)

GUEST_MAC = "52:54:00:12:34:56"


class Guest:
    """The NIC side of a UserBackend: send scapy packets, wait for answers matching a predicate."""

    def __init__(self, backend: UserBackend, collector) -> None:
        self.backend = backend
        self.rx = collector
        backend.start(collector)

    def send(self, packet) -> None:
        self.backend.send(bytes(packet))

    def expect(self, predicate, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching frame from passt")
            packet = Ether(self.rx.get(remaining))
            if predicate(packet):
                return packet

    def dhcp_offer(self):
        chaddr = bytes.fromhex(GUEST_MAC.replace(":", "")) + bytes(10)
        self.send(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                  / UDP(sport=68, dport=67) / BOOTP(chaddr=chaddr, xid=0x4B564D50)
                  / DHCP(options=[("message-type", "discover"), "end"]))
        return self.expect(lambda p: DHCP in p and p[BOOTP].xid == 0x4B564D50)

    def gateway_mac(self, gateway: str, me: str) -> str:
        self.send(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=GUEST_MAC, psrc=me, pdst=gateway))
        reply = self.expect(lambda p: ARP in p and p[ARP].op == 2 and p[ARP].psrc == gateway)
        assert reply[ARP].pdst == me and reply[Ether].dst == GUEST_MAC
        return reply[ARP].hwsrc


@pytest.fixture
def user_netdev(collector_factory):
    made: list[UserBackend] = []

    def make(**props: str) -> Guest:
        backend = build_netdev("user", "u0", [(k.split("__")[0], v) for k, v in props.items()])
        assert isinstance(backend, UserBackend)
        made.append(backend)
        return Guest(backend, collector_factory())

    yield make
    for backend in made:
        backend.close()


def _dhcp_options(packet) -> dict:
    return {opt[0]: opt[1] for opt in packet[DHCP].options if isinstance(opt, tuple)}


def test_dhcp_offer_has_slirp_addresses(user_netdev) -> None:
    guest = user_netdev()
    offer = guest.dhcp_offer()
    options = _dhcp_options(offer)
    assert offer[BOOTP].yiaddr == "10.0.2.15"
    assert options["message-type"] == 2  # OFFER
    assert options["router"] == "10.0.2.2" and options["subnet_mask"] == "255.255.255.0"
    assert options["interface-mtu"] == 1500
    assert guest.backend.info().startswith("user: net=10.0.2.0,restrict=off (passt pid ")


def test_dhcp_follows_net_host_and_dhcpstart(user_netdev) -> None:
    guest = user_netdev(net="192.168.76.0/255.255.255.0", host="192.168.76.1", dhcpstart="192.168.76.9")
    offer = guest.dhcp_offer()
    assert offer[BOOTP].yiaddr == "192.168.76.9"
    assert _dhcp_options(offer)["router"] == "192.168.76.1"


def test_tcp_to_the_gateway_reaches_a_host_listener(user_netdev) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    guest = user_netdev()
    gw_mac = guest.gateway_mac("10.0.2.2", "10.0.2.15")
    guest.send(Ether(src=GUEST_MAC, dst=gw_mac) / IP(src="10.0.2.15", dst="10.0.2.2")
               / TCP(sport=40000, dport=port, flags="S", seq=1000))
    synack = guest.expect(lambda p: TCP in p and p[TCP].dport == 40000)
    assert synack[TCP].flags == "SA" and synack[TCP].ack == 1001 and synack[IP].src == "10.0.2.2"
    listener.settimeout(5)
    conn, _ = listener.accept()  # passt made the host-side connection
    conn.close()
    listener.close()


def test_hostfwd_connects_the_host_to_the_guest_port(user_netdev) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    host_port = probe.getsockname()[1]
    probe.close()
    guest = user_netdev(hostfwd=f"tcp:127.0.0.1:{host_port}-:22", hostfwd__2=f"udp::{host_port}-:53")
    guest.gateway_mac("10.0.2.2", "10.0.2.15")  # passt learns the guest's MAC and address
    client = socket.create_connection(("127.0.0.1", host_port), timeout=5)
    syn = guest.expect(lambda p: TCP in p and p[TCP].dport == 22)
    assert syn[TCP].flags == "S" and syn[IP].dst == "10.0.2.15" and syn[Ether].dst == GUEST_MAC
    client.close()
    assert any(a == f"127.0.0.1/{host_port}:22" for a in guest.backend.passt.command)
    assert any(a == f"{host_port}:53" for a in guest.backend.passt.command)


def test_close_ends_passt(user_netdev) -> None:
    guest = user_netdev()
    process = guest.backend.passt.process
    guest.backend.close()
    assert process.poll() == 0  # it left by itself when its socket closed


def test_no_orphan_when_kvmpy_is_killed(tmp_path) -> None:
    script = textwrap.dedent("""
        import sys, time
        from kvmpy.net.netdev import build_netdev
        backend = build_netdev("user", "u0", [])
        print(backend.passt.pid, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=os.environ.copy())
    pid = int(child.stdout.readline())
    assert os.path.exists(f"/proc/{pid}")
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    state = open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}") else "gone"
    assert state in ("gone", "Z"), state  # exited (a zombie until init reaps it)


def test_missing_passt_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs passt \\(Debian package 'passt'\\)"):
        PasstProcess("u0", [], executable="kvmpy-no-such-passt")


def test_passt_failing_to_start_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="passt exited with status"):
        PasstProcess("u0", ["--no-such-option"])


def test_busy_hostfwd_port_is_refused() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    rule = f"tcp:127.0.0.1:{busy.getsockname()[1]}-:22"
    with pytest.raises(ConfigError, match=f"could not set up host forwarding rule '{rule}'"):
        build_netdev("user", "u0", [("hostfwd", rule)])
    busy.close()


@pytest.mark.parametrize("props, message", [
    ([("hostfwd", "tcp:2222-:22")], "invalid host forwarding rule"),
    ([("hostfwd", "sctp::2222-:22")], "invalid host forwarding rule"),
    ([("hostfwd", "tcp::99999-:22")], "out of range"),
    ([("hostfwd", "tcp::2222-10.0.2.99:22")], "guest's own address"),
    ([("guestfwd", "tcp:10.0.2.100:1234-cmd:x")], "'guestfwd=' is not supported"),
    ([("smb", "/tmp")], "'smb=' is not supported"),
    ([("net", "10.0.2.0/31")], "too small"),
    ([("host", "10.9.9.9")], "not a host address"),
    ([("dns", "10.0.2.2")], "must differ"),
    ([("ipv4", "off"), ("ipv6", "off")], "both disabled"),
    ([("tftp", "/srv")], "not supported"),
    ([("speed", "1")], "Parameter 'speed' is unexpected"),
])
def test_bad_user_options(props, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build_netdev("user", "u0", props)
    assert str(err.value).startswith("-netdev user,id=u0: ") and "\n" not in str(err.value)


def _host_ipv6_prefixes() -> set[str]:
    out = subprocess.run(["ip", "-6", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    return {str(ipaddress.IPv6Interface(word).network) for line in out.splitlines()
            for word in line.split()[3:4]}


@pytest.mark.skipif(not _host_ipv6_prefixes(), reason="the host has no global IPv6 address for passt to copy")
@pytest.mark.parametrize("ipv6", ["on", "off"])
def test_ipv6_router_advertisement_carries_the_hosts_prefix(user_netdev, ipv6) -> None:
    from scapy.layers.inet6 import IPv6, ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptPrefixInfo

    guest = user_netdev(ipv6=ipv6)
    guest.send(Ether(src=GUEST_MAC, dst="33:33:00:00:00:02") / IPv6(src="fe80::5054:ff:fe12:3456", dst="ff02::2")
               / ICMPv6ND_RS())
    if ipv6 == "off":
        assert guest.rx.empty_after(1.0)  # passt runs with --ipv4-only
        return
    ra = guest.expect(lambda p: ICMPv6ND_RA in p)
    info = ra[ICMPv6NDOptPrefixInfo]
    assert f"{info.prefix}/{info.prefixlen}" in _host_ipv6_prefixes()
