"""-netdev user: user-mode networking by running passt (Debian package ``passt``) instead of slirp.

kvmpy does not carry a TCP/IP stack. passt is started with one end of a
socketpair (``passt -f -F FD``) and speaks QEMU's stream framing on it, so the
frames go through a ``StreamBackend`` over the other end. passt answers DHCP,
ARP and NDP itself and turns the guest's TCP/UDP/ICMP into ordinary host
sockets.

Addresses follow slirp's layout, so guests and scripts written for QEMU keep
working: ``net=10.0.2.0/24``, the gateway (which is the host) ``host=10.0.2.2``,
the guest's DHCP address ``dhcpstart=10.0.2.15``, and ``dns=10.0.2.3`` mapped
to the host's first resolver. Differences from slirp are listed in
docs/net.md.

Lifetime: passt runs in the foreground as our child and exits by itself when
its socket closes (``-F`` implies one-off), which also covers kvmpy being
killed. ``close`` closes the socket, then waits, then terminates and kills
passt if it lingers, so no passt outlives the VM.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kvmpy.errors import ConfigError
from kvmpy.net.backend import NetBackend, Receive
from kvmpy.net.options import NetdevOptions
from kvmpy.net.stream import ConnectedSocket, StreamBackend
from kvmpy.netaddr import check_port

log = logging.getLogger(__name__)

PASST = "passt"
MTU = 1500  # slirp's; passt would otherwise offer 65520, which needs big RX buffers in the guest
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0

SUPPORTED_KEYS = ("hostfwd", "net", "host", "dns", "dhcpstart", "ipv4", "ipv6", "dnssearch")
UNSUPPORTED_KEYS = ("restrict", "hostname", "domainname", "tftp", "bootfile", "smb", "smbserver", "guestfwd",
                    "ipv6-net", "ipv6-prefix", "ipv6-prefixlen", "ipv6-host", "ipv6-dns", "tftp-server-name")
USER_KEYS = SUPPORTED_KEYS + UNSUPPORTED_KEYS


@dataclass(frozen=True)
class HostForward:
    """One ``hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`` rule."""

    rule: str
    proto: str
    host_addr: str
    host_port: int
    guest_port: int

    def passt_args(self) -> list[str]:
        spec = f"{self.host_addr}/{self.host_port}" if self.host_addr else str(self.host_port)
        return ["-t" if self.proto == "tcp" else "-u", f"{spec}:{self.guest_port}"]

    def check_free(self) -> None:
        """Bind the host port once, so a busy port is an error here (passt would skip it silently)."""
        kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
        host = self.host_addr or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, self.host_port))
            except OSError as exc:
                raise ConfigError(f"could not set up host forwarding rule '{self.rule}': {exc.strerror or exc}") \
                    from None


@dataclass(frozen=True)
class UserNetwork:
    """The slirp-style addresses of one -netdev user, checked and resolved to what passt is told."""

    net: ipaddress.IPv4Network
    host: ipaddress.IPv4Address
    guest: ipaddress.IPv4Address
    dns: ipaddress.IPv4Address
    ipv4: bool
    ipv6: bool
    search: tuple[str, ...]
    forwards: tuple[HostForward, ...]

    def passt_args(self) -> list[str]:
        args = ["--mtu", str(MTU)]
        if self.ipv4:
            args += ["--address", str(self.guest), "--netmask", str(self.net.prefixlen),
                     "--gateway", str(self.host), "--dns-forward", str(self.dns)]
        if not self.ipv6:
            args.append("--ipv4-only")
        elif not self.ipv4:
            args.append("--ipv6-only")
        if self.search:
            args += ["--search", " ".join(self.search)]
        for forward in self.forwards:
            args += forward.passt_args()
        return args


def _ipv4(opts: NetdevOptions, key: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise opts.error(f"Parameter '{key}' expects an IPv4 address, not {text[:40]!r}") from None


def _network(opts: NetdevOptions) -> ipaddress.IPv4Network:
    text = opts.get("net", "10.0.2.0/24") or ""
    if "/" not in text:
        text += "/24"
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise opts.error(f"Parameter 'net' expects ADDRESS[/MASK], not {text[:40]!r}") from None
    if net.prefixlen > 30:
        raise opts.error(f"net={net} is too small (at most /30)")
    return net


def _address_in(opts: NetdevOptions, net: ipaddress.IPv4Network, key: str, offset: int) -> ipaddress.IPv4Address:
    value = opts.get(key)
    address = _ipv4(opts, key, value) if value else net.network_address + offset
    if address not in net or address in (net.network_address, net.broadcast_address):
        raise opts.error(f"{key}={address} is not a host address in net={net}")
    return address


def _host_forward(opts: NetdevOptions, rule: str, guest: ipaddress.IPv4Address) -> HostForward:
    proto, sep0, rest = rule.partition(":")  # an empty protocol is tcp, as in QEMU
    host_part, dash, guest_part = rest.partition("-")
    host_addr, sep1, host_port = host_part.rpartition(":")
    guest_addr, sep2, guest_port = guest_part.rpartition(":")
    if not (sep0 and dash and sep1 and sep2) or proto not in ("", "tcp", "udp"):
        raise opts.error(f"invalid host forwarding rule '{rule[:80]}' "
                         "(expected [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT)")
    try:
        hport, gport = check_port(host_port), check_port(guest_port)
        if host_addr:
            ipaddress.IPv4Address(host_addr)
    except ValueError as exc:
        raise opts.error(f"invalid host forwarding rule '{rule[:80]}': {exc}") from None
    if hport == 0 or gport == 0:
        raise opts.error(f"invalid host forwarding rule '{rule[:80]}': port 0")
    if guest_addr and guest_addr != str(guest):
        raise opts.error(f"hostfwd '{rule[:80]}': passt forwards to the guest's own address ({guest}); "
                         f"a different guest address is not supported")
    return HostForward(rule, proto or "tcp", host_addr, hport, gport)


def parse_user_network(opts: NetdevOptions) -> UserNetwork:
    for key in UNSUPPORTED_KEYS:
        if opts.has(key):
            raise opts.error(f"'{key}=' is not supported by kvmpy's user networking (it runs passt, not slirp)")
    ipv4, ipv6 = opts.get_bool("ipv4", True), opts.get_bool("ipv6", True)
    if not ipv4 and not ipv6:
        raise opts.error("IP versions 4 and 6 are both disabled")
    net = _network(opts)
    host = _address_in(opts, net, "host", 2)
    guest = _address_in(opts, net, "dhcpstart", 15)
    dns = _address_in(opts, net, "dns", 3)
    if len({host, guest, dns}) != 3:
        raise opts.error(f"host={host}, dhcpstart={guest} and dns={dns} must differ")
    forwards = tuple(_host_forward(opts, rule, guest) for rule in opts.get_all("hostfwd"))
    search = tuple(opts.get_all("dnssearch"))
    for name in search:
        if not name or not name.isascii() or not name.isprintable() or " " in name or len(name) > 253:
            raise opts.error(f"dnssearch={name[:64]!r} is not a domain name")
    return UserNetwork(net, host, guest, dns, ipv4, ipv6, search, forwards)


class PasstProcess:
    """One passt child on a socketpair; ``sock`` is our end. Raises ConfigError if passt is missing or fails."""

    def __init__(self, netdev_id: str, args: list[str], executable: str = PASST) -> None:
        path = shutil.which(executable)
        if path is None:
            raise ConfigError(f"-netdev user,id={netdev_id}: needs passt (Debian package 'passt'), "
                              f"which is not installed or not in PATH")
        self._dir = Path(tempfile.mkdtemp(prefix="kvmpy-passt-"))
        self._log = open(self._dir / "log", "w+b")  # noqa: SIM115 - lives as long as the process
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        runas: list[str] = []
        if os.geteuid() == 0:  # passt refuses to keep root; give it a directory it can write as nobody
            nobody = pwd.getpwnam("nobody")
            os.chown(self._dir, nobody.pw_uid, nobody.pw_gid)
            runas = ["--runas", f"{nobody.pw_uid}:{nobody.pw_gid}"]
        self.command = [path, "--foreground", "--quiet", *runas, "--fd", str(theirs.fileno()),
                        "--pid", str(self._dir / "pid"), *args]
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                            stderr=self._log, pass_fds=(theirs.fileno(),))
        except OSError as exc:
            ours.close()
            self._cleanup()
            raise ConfigError(f"-netdev user,id={netdev_id}: cannot run passt: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        self.sock = ours
        self.pid = self.process.pid
        try:
            self._wait_ready(netdev_id)
        except ConfigError:
            self.sock.close()
            self.stop(quiet=True)  # the ConfigError already carries passt's message
            raise

    def _wait_ready(self, netdev_id: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self._dir / "pid").exists():
            if self.process.poll() is not None:
                raise ConfigError(f"-netdev user,id={netdev_id}: passt exited with status "
                                  f"{self.process.returncode}: {self.output() or 'no message'}")
            if time.monotonic() > deadline:
                raise ConfigError(f"-netdev user,id={netdev_id}: passt did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        log.info("netdev %s: passt running as pid %d: %s", netdev_id, self.pid, " ".join(self.command))

    def output(self) -> str:
        """passt's last message (its log without the noise about a missing syslog)."""
        self._log.seek(0)
        lines = [line for line in self._log.read(65536).decode("utf-8", "replace").splitlines()
                 if line.strip() and "syslog" not in line]
        return lines[-1].strip()[:200] if lines else ""

    def stop(self, quiet: bool = False) -> None:
        """Wait for passt to leave after its socket closed; terminate, then kill, if it does not."""
        for action in (None, self.process.terminate, self.process.kill):
            if action is not None:
                action()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        if not quiet and self.process.returncode not in (0, None, -15):
            log.warning("passt pid %d exited with status %s: %s", self.pid, self.process.returncode, self.output())
        self._cleanup()

    def _cleanup(self) -> None:
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class UserBackend(NetBackend):
    """``-netdev user`` as a StreamBackend to a passt child it owns."""

    def __init__(self, netdev_id: str, network: UserNetwork, executable: str = PASST) -> None:
        self.id = netdev_id
        self.network = network
        for forward in network.forwards:
            try:
                forward.check_free()
            except ConfigError as exc:
                raise ConfigError(f"-netdev user,id={netdev_id}: {exc}") from None
        self.passt = PasstProcess(netdev_id, network.passt_args(), executable)
        self.stream = StreamBackend(netdev_id, ConnectedSocket(self.passt.sock, "passt"), kind="user")

    def start(self, receive: Receive) -> None:
        self.stream.start(receive)

    def send(self, frame: bytes | memoryview) -> None:
        self.stream.send(frame)

    def rx_ready(self) -> None:
        self.stream.rx_ready()

    def set_link(self, up: bool) -> None:
        self.stream.set_link(up)

    def close(self) -> None:
        self.stream.close()  # closes our end of the socketpair, which makes passt exit
        self.passt.sock.close()
        self.passt.stop()

    def info(self) -> str:
        return f"user: net={self.network.net.network_address},restrict=off (passt pid {self.passt.pid})"


def user_from_options(opts: NetdevOptions) -> UserBackend:
    return UserBackend(opts.id, parse_user_network(opts))
