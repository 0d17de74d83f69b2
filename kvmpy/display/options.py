"""The display options of the command line and the machine file: ``-vnc`` and ``-display``, read as QEMU reads them.

``-vnc [HOST]:N[,password=on|off]`` listens on TCP port 5900+N; ``-vnc none`` (or no
``-vnc``) starts no server. ``-display vnc=[HOST]:N[,...]`` is the same, ``-display none``
shows nothing. One deliberate difference from QEMU: an empty HOST means loopback
(127.0.0.1), not every interface, so a console is never opened to the network by
accident; ``-vnc 0.0.0.0:N`` asks for that. ``-display web[=[HOST]:PORT]`` (a kvmpy
addition, served by ``kvmpy.display.web``) is read here too, so checking a configuration
never imports the servers. Mistakes are one ConfigError line worded as
QEMU's (``-vnc foo: no vnc port specified``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmpy.errors import ConfigError
from kvmpy.qemu_opts import parse_bool, parse_opts, shown, where

VNC_BASE_PORT = 5900
DEFAULT_HOST = "127.0.0.1"
# -vnc options QEMU has that kvmpy does not implement: refused by name rather than ignored.
_QEMU_ONLY = {"reverse", "websocket", "tls-creds", "tls-authz", "sasl", "sasl-authz", "acl", "lossy",
              "non-adaptive", "share", "key-delay-ms", "audiodev", "power-control", "connections",
              "to", "ipv4", "ipv6", "display", "head", "lock-key-sync", "password-secret"}
# -display types QEMU knows that kvmpy does not offer.
_OTHER_DISPLAYS = {"gtk", "sdl", "curses", "egl-headless", "dbus", "spice-app", "cocoa", "default", "web"}


def _plain(text: str) -> str:
    """``text`` unquoted but escaped and shortened, as one line of a message."""
    return repr(text[:40])[1:-1]


@dataclass(frozen=True)
class VncOptions:
    """Where the VNC server listens and whether it asks for a password."""

    host: str
    display: int
    password: bool = False
    source: str = "-vnc"  # the option as given, the prefix of a message about it

    @property
    def port(self) -> int:
        return VNC_BASE_PORT + self.display


def parse_vnc(text: str, option: str = "-vnc") -> VncOptions | None:
    """``text`` of ``-vnc`` (or of ``-display vnc=``); None for ``none``."""
    if not isinstance(text, str):
        raise ConfigError(f"{option}: expected text, not {type(text).__name__}")
    if text == "none":
        return None
    opts = parse_opts(text, option, "vnc")
    address = opts.get("vnc") or ""
    password = False
    for key in opts.keys():
        if key == "vnc":
            continue
        if key == "password":
            password = parse_bool(opts.get(key), key, option, text)
        elif key in _QEMU_ONLY:
            raise opts.fail(f"Parameter '{key}' is not supported by kvmpy")
        else:
            raise opts.fail(f"Invalid parameter '{_plain(key)}'")
    if address.startswith("unix:"):
        raise opts.fail("a VNC server on a UNIX socket is not supported by kvmpy (use [HOST]:N)")
    host, sep, number = address.rpartition(":")
    if not sep:
        raise opts.fail("no vnc port specified")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not number.isdigit() or len(number) > 10:
        raise opts.fail(f"can't convert to a number: {_plain(number)}")
    display = int(number)
    if display > 0xFFFF - VNC_BASE_PORT:
        raise opts.fail(f"port {display} out of range")
    return VncOptions(host or DEFAULT_HOST, display, password, where(option, text))


def parse_display(text: str) -> tuple[bool, str | None]:
    """``-display`` text: whether kvmpy offers it (``none``, ``vnc=``), and the ``-vnc`` text of a
    ``vnc=`` one (``vnc=:1,password=on`` reads the same under -vnc, the first key being implied)."""
    kind = text.partition(",")[0].partition("=")[0]
    if kind == "none":
        return True, None
    if kind == "vnc":
        if not text.partition(",")[0].partition("=")[1]:
            raise ConfigError(f"{where('-display', text)}: VNC requires a display argument vnc=<display>")
        parse_vnc(text, "-display")
        return True, text
    if kind in _OTHER_DISPLAYS:
        raise ConfigError(f"{where('-display', text)}: kvmpy has no display window ({kind}); use -display none "
                          "or -display vnc=[HOST]:N")
    raise ConfigError(f"{where('-display', text)}: Parameter 'type' does not accept value {shown(kind, 40)}")


WEB_DEFAULT_HOST = "127.0.0.1"
WEB_DEFAULT_PORT = 6080  # websockify's and noVNC's customary port


@dataclass(frozen=True)
class WebOptions:
    """Where the browser console listens."""

    host: str = WEB_DEFAULT_HOST
    port: int = WEB_DEFAULT_PORT
    source: str = field(default="-display web", compare=False)  # the option as given, prefixing messages


def is_web_display(text: str) -> bool:
    """Whether ``-display`` text asks for the browser console (``web`` or ``web=...``)."""
    return isinstance(text, str) and text.partition(",")[0].partition("=")[0] == "web"


def parse_web(text: str) -> WebOptions:
    """``-display`` text ``web`` or ``web=[HOST]:PORT`` (``web=PORT`` also reads as a port); ConfigError otherwise."""
    where = f"-display {text[:60]!r}"
    if not isinstance(text, str) or not is_web_display(text):
        raise ConfigError(f"{where}: not a web display")
    if "," in text:
        raise ConfigError(f"{where}: -display web takes no options (web[=HOST:PORT])")
    address = text.partition("=")[2]
    if not address:
        return WebOptions(source=where)
    host, sep, number = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not number.isdigit() or len(number) > 5 or int(number) > 0xFFFF:
        raise ConfigError(f"{where}: bad port {number[:20]!r} (expected web=[HOST]:PORT, PORT 0-65535)")
    if sep and not host:
        host = WEB_DEFAULT_HOST
    return WebOptions(host or WEB_DEFAULT_HOST, int(number), where)
