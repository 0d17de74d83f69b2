"""The tap netdev: ``-netdev tap,id=,ifname=,script=,downscript=[,vnet_hdr=][,vhost=on][,fd=]`` over /dev/net/tun.

The tap is opened as QEMU opens it: IFF_TAP | IFF_NO_PI, plus IFF_VNET_HDR
when the kernel offers it (or ``vnet_hdr=on`` insists), the virtio-net header
length set to 12 bytes (virtio 1.x's ``virtio_net_hdr_v1``) and no offloads
until the guest accepts some (``set_offloads`` -> TUNSETOFFLOAD). The send
buffer is unlimited (TUNSETSNDBUF INT_MAX), as QEMU's default.

``script=``/``downscript=`` run as in QEMU: the program gets the interface
name as its one argument after the tap is up (``script``) and when the netdev
closes (``downscript``); "no" or "" means none; the defaults are
/etc/qemu-ifup and /etc/qemu-ifdown. ``fd=N`` takes an already open tap from
the parent process (then ifname/script/downscript/vnet_hdr are refused, as
QEMU refuses them). ``br=``/``helper=`` (qemu-bridge-helper) and multiqueue
(``queues=``, ``fds=``) are refused with a clear message.

A reader thread polls the tap and hands each frame to the device's
``receive`` callback. When the device has no room the frame is held and
reading stops until ``rx_ready()``; the kernel queues (and, when full, drops)
meanwhile. While the link is down (``set_link(False)``) frames are dropped
both ways and counted. With ``vhost=on`` the in-kernel vhost-net worker moves
the frames (see :mod:`kvmpy.net.vhost`); the reader thread is parked while it
does (``pause_reader``/``resume_reader``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from ioctl_opt import IOR, IOW

from kvmpy.errors import ConfigError
from kvmpy.net.backend import NetBackend, Receive

if TYPE_CHECKING:
    from kvmpy.net.vhost import VhostNet

log = logging.getLogger(__name__)

_INT = struct.Struct("i")
_UINT = struct.Struct("I")
TUNSETIFF = IOW(ord("T"), 202, _INT)
TUNSETOFFLOAD = IOW(ord("T"), 208, _UINT)
TUNGETFEATURES = IOR(ord("T"), 207, _UINT)
TUNGETIFF = IOR(ord("T"), 210, _UINT)
TUNSETSNDBUF = IOW(ord("T"), 212, _INT)
TUNSETVNETHDRSZ = IOW(ord("T"), 216, _INT)

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

IFNAMSIZ = 16
VNET_HDR_LEN = 12  # struct virtio_net_hdr_v1 (virtio 1.x), the size virtio-net uses with VERSION_1
# The largest frame a reader accepts: a 64 KiB GSO packet plus link headers, as QEMU's NET_BUFSIZE.
READ_SIZE = VNET_HDR_LEN + 4096 + 65536
DEFAULT_SCRIPT = "/etc/qemu-ifup"
DEFAULT_DOWNSCRIPT = "/etc/qemu-ifdown"
SCRIPT_TIMEOUT_S = 60
TUN_PATH = "/dev/net/tun"

_KEYS = frozenset({"id", "ifname", "fd", "script", "downscript", "vnet_hdr", "vhost", "vhostfd", "vhostforce",
                   "sndbuf"})
_REFUSED = {"br": "br= needs qemu-bridge-helper, which kvmpy does not run; create the tap yourself "
                  "(ip tuntap add ... ; ip link set ... master BRIDGE) and pass ifname=",
            "helper": "helper= (qemu-bridge-helper) is not supported; pass an existing tap with ifname= or fd=",
            "queues": "multiqueue tap (queues=) is not supported", "fds": "multiqueue tap (fds=) is not supported",
            "vhostfds": "multiqueue tap (vhostfds=) is not supported",
            "poll-us": "poll-us= (vhost busy polling) is not supported"}


class NetdevError(ConfigError):
    """A -netdev option a user got wrong, or a tap the host refuses; the message is one line."""


def _on_off(opts: Mapping[str, str], key: str, default: bool | None) -> bool | None:
    v = opts.get(key)
    if v is None:
        return default
    if v in ("on", "yes", "true", "y"):
        return True
    if v in ("off", "no", "false", "n"):
        return False
    raise NetdevError(f"Parameter '{key}' expects 'on' or 'off'")


def _fd_number(text: str, key: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise NetdevError(f"Parameter '{key}' expects a file descriptor number, not '{text[:20]}'")
    return int(text)


@dataclass(frozen=True)
class TapOptions:
    """The validated options of one ``-netdev tap``."""

    id: str
    ifname: str | None = None
    fd: int | None = None
    script: str | None = DEFAULT_SCRIPT  # None: no script
    downscript: str | None = DEFAULT_DOWNSCRIPT
    vnet_hdr: bool | None = None  # None: use it when the kernel offers it
    vhost: bool = False
    vhostfd: int | None = None
    vhostforce: bool = False

    @classmethod
    def parse(cls, opts: Mapping[str, str]) -> "TapOptions":
        for key in opts:
            if key in _REFUSED:
                raise NetdevError(f"-netdev tap: {_REFUSED[key]}")
            if key not in _KEYS:
                raise NetdevError(f"-netdev tap: Invalid parameter '{key[:40]}'")
        ident = opts.get("id")
        if not ident:
            raise NetdevError("-netdev tap: Parameter 'id' is missing")
        fd = _fd_number(opts["fd"], "fd") if "fd" in opts else None
        if fd is not None:
            bad = [k for k in ("ifname", "script", "downscript", "vnet_hdr") if k in opts]
            if bad:
                raise NetdevError("ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, "
                                  "and vhostfds= are invalid with fd=")
        ifname = opts.get("ifname")
        if ifname is not None and (not 0 < len(ifname.encode()) < IFNAMSIZ or "/" in ifname
                                   or any(c.isspace() for c in ifname)):
            raise NetdevError(f"-netdev tap: ifname '{ifname[:40]}' is not a valid interface name "
                              f"(1 to {IFNAMSIZ - 1} bytes, no '/' or spaces)")

        def script(key: str, default: str) -> str | None:
            v = opts.get(key, default if fd is None else "no")
            return None if v in ("no", "") else v

        vhostfd = _fd_number(opts["vhostfd"], "vhostfd") if "vhostfd" in opts else None
        vhostforce = bool(_on_off(opts, "vhostforce", False))
        vhost = bool(_on_off(opts, "vhost", vhostfd is not None or vhostforce))
        vnet_hdr = _on_off(opts, "vnet_hdr", None)
        if vhost and vnet_hdr is False:
            raise NetdevError("vhost-net requires vnet_hdr=on")
        return cls(ident, ifname, fd, script("script", DEFAULT_SCRIPT), script("downscript", DEFAULT_DOWNSCRIPT),
                   vnet_hdr, vhost, vhostfd, vhostforce)


@dataclass
class NetStats:
    """Frame counters of one backend (HMP ``info network`` prints them)."""

    rx_frames: int = 0
    rx_dropped: int = 0
    tx_frames: int = 0
    tx_dropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def _run_script(path: str, ifname: str) -> None:
    try:
        proc = subprocess.run([path, ifname], stdin=subprocess.DEVNULL, timeout=SCRIPT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise NetdevError(f"network script {path} failed: it does not exist (use script=no to run none)") from None
    except PermissionError:
        raise NetdevError(f"network script {path} failed: it is not executable") from None
    except subprocess.TimeoutExpired:
        raise NetdevError(f"network script {path} did not finish within {SCRIPT_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise NetdevError(f"network script {path} failed with status {proc.returncode}")


def _open_tap(ifname: str | None, vnet_hdr: bool | None) -> tuple[int, str, bool]:
    """Open /dev/net/tun as a tap; return (fd, the interface name, whether IFF_VNET_HDR is on)."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise NetdevError(f"could not open {TUN_PATH}: {exc.strerror}") from None
    try:
        features = bytearray(_UINT.size)
        try:
            fcntl.ioctl(fd, TUNGETFEATURES, features, True)
            offered = _UINT.unpack(features)[0]
        except OSError:
            offered = 0
        flags = IFF_TAP | IFF_NO_PI
        if offered & IFF_ONE_QUEUE:
            flags |= IFF_ONE_QUEUE
        use_hdr = bool(offered & IFF_VNET_HDR) if vnet_hdr is None else vnet_hdr
        if use_hdr and not offered & IFF_VNET_HDR:
            raise NetdevError("vnet_hdr=1 requested, but no kernel support for IFF_VNET_HDR available")
        if use_hdr:
            flags |= IFF_VNET_HDR
        name = (ifname or "tap%d").encode()
        ifr = bytearray(struct.pack(f"{IFNAMSIZ}sH22x", name, flags))
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr, True)
        except OSError as exc:
            raise NetdevError(f"could not configure {TUN_PATH} ({ifname or 'tap%d'}): {exc.strerror}") from None
        return fd, ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode(errors="replace"), use_hdr
    except BaseException:
        os.close(fd)
        raise


def _adopt_fd(fd: int) -> tuple[int, str, bool]:
    """A tap fd handed over by the parent (``fd=N``): check it is one and read its name and flags."""
    ifr = bytearray(40)
    try:
        fcntl.ioctl(fd, TUNGETIFF, ifr, True)
    except OSError as exc:
        raise NetdevError(f"fd={fd} is not an open tap: {exc.strerror}") from None
    name = ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode(errors="replace")
    flags = struct.unpack_from("H", ifr, IFNAMSIZ)[0]
    if not flags & IFF_TAP:
        raise NetdevError(f"fd={fd} is a tun device ({name}), not a tap")
    if flags & IFF_MULTI_QUEUE:
        log.info("tap %s is multiqueue; kvmpy uses this one queue", name)
    return fd, name, bool(flags & IFF_VNET_HDR)


class TapBackend(NetBackend):
    """One tap interface; frames carry the 12-byte virtio-net header when ``vnet_hdr``."""

    def __init__(self, options: TapOptions) -> None:
        self.options = options
        self.id = options.id
        if options.fd is not None:
            fd, self.ifname, self.vnet_hdr = _adopt_fd(options.fd)
        else:
            fd, self.ifname, self.vnet_hdr = _open_tap(options.ifname, options.vnet_hdr)
        self.fd = fd
        self.stats = NetStats()
        self.link_up = True
        self.offloads = 0
        self._lock = threading.Lock()
        self._receive: Receive | None = None
        self._held: bytes | None = None
        self._paused = False
        self._closing = False
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread: threading.Thread | None = None
        self._script_ran = False
        self.vhost: "VhostNet | None" = None
        try:
            os.set_blocking(fd, False)
            self._configure()
            if options.script is not None:
                _run_script(options.script, self.ifname)
                self._script_ran = True
            if options.vhost:
                from kvmpy.net.vhost import VhostError, VhostNet

                try:
                    self.vhost = VhostNet.open(options.vhostfd)
                except VhostError as exc:
                    raise NetdevError(f"tap {self.ifname}: vhost-net requested but could not be initialized: {exc}")
        except BaseException:
            self._release()
            raise
        log.info("tap %s open (vnet_hdr=%s, vhost=%s)", self.ifname, self.vnet_hdr, self.vhost is not None)

    @classmethod
    def from_options(cls, opts: Mapping[str, str]) -> "TapBackend":
        """``-netdev tap,...`` options (``id`` included) as a str -> str mapping."""
        return cls(TapOptions.parse(opts))

    def _configure(self) -> None:
        try:
            fcntl.ioctl(self.fd, TUNSETSNDBUF, bytearray(_INT.pack(0x7FFFFFFF)), True)
        except OSError as exc:
            log.debug("tap %s: TUNSETSNDBUF: %s", self.ifname, exc.strerror)
        if self.vnet_hdr:
            try:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, bytearray(_INT.pack(VNET_HDR_LEN)), True)
            except OSError as exc:
                raise NetdevError(f"tap {self.ifname}: cannot set a {VNET_HDR_LEN}-byte vnet header: "
                                  f"{exc.strerror}") from None
            self._set_offload(0)

    def _set_offload(self, flags: int) -> None:
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
            self.offloads = flags
        except OSError as exc:
            log.warning("tap %s: TUNSETOFFLOAD %#x refused: %s", self.ifname, flags, exc.strerror)

    # ---- NetBackend ------------------------------------------------------------------
    def set_offloads(self, csum: bool, tso4: bool, tso6: bool, ecn: bool, ufo: bool) -> None:
        if not self.vnet_hdr:
            return
        flags = 0
        if csum:
            flags |= TUN_F_CSUM
            if tso4:
                flags |= TUN_F_TSO4
            if tso6:
                flags |= TUN_F_TSO6
            if ecn and (tso4 or tso6):
                flags |= TUN_F_TSO_ECN
            if ufo:
                flags |= TUN_F_UFO
        self._set_offload(flags)

    def start(self, receive: Receive) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError(f"tap {self.ifname} is closed")
            self._receive = receive
            if self._thread is None:
                self._thread = threading.Thread(target=self._reader, name=f"tap-{self.id}", daemon=True)
                self._thread.start()
        self._kick()

    def send(self, frame: bytes | memoryview) -> None:
        if not self.link_up or self._closing:
            self.stats.tx_dropped += 1
            return
        try:
            os.write(self.fd, frame)
            self.stats.tx_frames += 1
        except OSError as exc:
            # EAGAIN: the kernel's queue is full; EIO: the interface is down; EINVAL: a header the kernel refused.
            self.stats.tx_dropped += 1
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
            if self.stats.errors[name] == 1:
                log.info("tap %s: a frame was dropped on send: %s", self.ifname, exc.strerror)

    def rx_ready(self) -> None:
        self._kick()

    def set_link(self, up: bool) -> None:
        self.link_up = up
        self._kick()

    def pause_reader(self) -> None:
        """Stop reading the tap (vhost-net takes the fd); a held frame stays held."""
        with self._lock:
            self._paused = True
        self._kick()

    def resume_reader(self) -> None:
        with self._lock:
            self._paused = False
        self._kick()

    def info(self) -> str:
        script = self.options.script or "no"
        down = self.options.downscript or "no"
        if self.options.fd is not None:
            return f"tap: fd={self.options.fd}"
        return f"tap: ifname={self.ifname},script={script},downscript={down}"

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._kick()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._release()

    def _release(self) -> None:
        if self.vhost is not None:
            self.vhost.close()
            self.vhost = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
        if self._script_ran and self.options.downscript is not None:
            self._script_ran = False
            try:
                _run_script(self.options.downscript, self.ifname)
            except NetdevError as exc:
                log.warning("%s", exc)

    # ---- the reader thread ----------------------------------------------------------
    def _kick(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)
        except (OSError, ValueError):
            pass  # closed

    def _reader(self) -> None:
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        watching_tap = False
        woken = False
        while True:
            with self._lock:
                if self._closing:
                    return
                paused = self._paused
                receive = self._receive
            if woken and self._held is not None and receive is not None and not paused:
                self._deliver(receive, self._held)  # rx_ready, set_link or resume: try the held frame again
            woken = False
            want_tap = not paused and self._held is None and receive is not None
            if want_tap != watching_tap:
                if want_tap:
                    poller.register(self.fd, select.POLLIN)
                else:
                    poller.unregister(self.fd)
                watching_tap = want_tap
            for fd, _ in sorted(poller.poll(), key=lambda ev: ev[0] != self._wake):  # the wake fd first
                if fd == self._wake:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    woken = True
                elif self._held is None and receive is not None:
                    self._drain(receive)
                    woken = False  # a wake read before this frame was held is not the device's rx_ready

    def _drain(self, receive: Receive) -> None:
        """Read frames until the tap is empty or the device has no room."""
        for _ in range(256):  # then look at the wake fd again
            try:
                frame = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    return
                log.warning("tap %s: read failed: %s", self.ifname, exc.strerror)
                return
            if not frame:
                return
            if not self._deliver(receive, frame):
                return

    def _deliver(self, receive: Receive, frame: bytes) -> bool:
        """Hand one frame over; False (and the frame held) when the device has no room."""
        if not self.link_up:
            self._held = None
            self.stats.rx_dropped += 1
            return True
        try:
            taken = receive(frame)
        except Exception:  # a device bug must not kill the reader; drop the frame
            log.exception("tap %s: the device failed to take a frame", self.ifname)
            taken = True
            self.stats.rx_dropped += 1
        if taken:
            self._held = None
            self.stats.rx_frames += 1
            return True
        self._held = frame
        return False
