"""The browser console, ``-display web[=HOST:PORT]``: noVNC in a page and a WebSocket bridge to kvmpy's own VNC server.

kvmpy writes neither a viewer nor a WebSocket server. The viewer is noVNC's
library (npm ``@novnc/novnc``, which scripts/setup unpacks into
~/.cache/kvmpy/novnc), shown by a page of a few lines (:data:`PAGE_HTML`) that
connects on load. websockify (the noVNC project's WebSocket-to-TCP bridge) serves
the page and noVNC's modules from a per-console directory of links and relays each
WebSocket to the VM's VNC server. websockify runs as a child process in its
``--inetd`` mode: kvmpy binds the listening socket itself (so a port in use or a
bad address is one clear error before the VM starts, and PORT 0 picks a free
port) and hands it over on the child's stdin. The child's forking, working
directory and printing stay out of the hypervisor, and closing the console ends it.

With ``-vnc`` as well, the browser sees that server; with ``-display web`` alone
the VNC server listens on a free loopback port for the bridge only. HOST
defaults to 127.0.0.1 (QEMU has no such display; loopback, as kvmpy's ``-vnc``,
so a console is never opened to the network by accident) and PORT to 6080,
noVNC's usual port.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

from kvmpy.display.console import BlankScreen
from kvmpy.display.options import WebOptions
from kvmpy.display.surface import DisplaySource, KeyboardSink, PointerSink
from kvmpy.display.vnc import VncServer
from kvmpy.errors import ConfigError

log = logging.getLogger(__name__)

# Where scripts/setup unpacks noVNC's npm package (its core/ and vendor/ modules).
NOVNC_DIR = Path.home() / ".cache" / "kvmpy" / "novnc"
NOVNC_PARTS = ("core", "vendor")  # what the page's modules import, linked into the web root
# The console page: noVNC's RFB object on the whole window, connecting back to where the page came from.
PAGE_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>kvmpy</title>
<style>html, body { margin: 0; height: 100%; background: #282828; color: #ddd; font: 14px sans-serif; }
#status { padding: 4px 8px; } #screen { position: absolute; top: 26px; bottom: 0; left: 0; right: 0; }</style>
</head><body><div id="status">Connecting...</div><div id="screen"></div>
<script type="module">
import RFB from "./core/rfb.js";
const status = document.getElementById("status");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const rfb = new RFB(document.getElementById("screen"), scheme + location.host + "/websockify");
rfb.addEventListener("connect", () => { status.textContent = "Connected"; rfb.focus(); });
rfb.addEventListener("disconnect", (e) => {
  status.textContent = e.detail.clean ? "Disconnected" : "Connection lost"; });
rfb.addEventListener("desktopname", (e) => { document.title = e.detail.name; });
rfb.addEventListener("credentialsrequired", () => {
  rfb.sendCredentials({ password: window.prompt("VNC password") || "" }); });
</script></body></html>
"""
STOP_TIMEOUT = 5.0  # seconds websockify has to exit after SIGTERM
# Runs websockify (argv[2:]) and ends it once the pipe on fd argv[1] reads EOF, which happens when kvmpy
# exits in any way (SIGKILL included), so a killed VM leaves no bridge holding its port.
_LAUNCHER = """import os, runpy, signal, sys, threading
fd = int(sys.argv[1])
def watch():
    while os.read(fd, 64):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["websockify", *sys.argv[2:]]
runpy.run_module("websockify", run_name="__main__", alter_sys=True)
"""


def find_novnc(directory: Path = NOVNC_DIR) -> Path | None:
    """``directory`` if it holds noVNC's library (core/rfb.js and its vendored modules), else None."""
    if (directory / "core" / "rfb.js").is_file() and (directory / "vendor").is_dir():
        return directory
    return None


def make_web_root(novnc: Path) -> Path:
    """A new directory websockify serves: the console page and links to noVNC's modules."""
    root = Path(tempfile.mkdtemp(prefix="kvmpy-web-"))
    (root / "index.html").write_text(PAGE_HTML)
    for part in NOVNC_PARTS:
        (root / part).symlink_to(novnc / part, target_is_directory=True)
    return root


def _bind(options: WebOptions) -> socket.socket:
    try:
        infos = socket.getaddrinfo(options.host, options.port, socket.AF_INET, socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{options.source}: cannot resolve {options.host[:60]!r} as an IPv4 address: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{options.source}: cannot listen on {options.host}:{options.port}: "
                          f"{exc.strerror or exc}") from None
    return sock


class WebConsole:
    """A running websockify child serving noVNC on ``options``' address and bridging to a VNC server."""

    def __init__(self, options: WebOptions, vnc_address: tuple, novnc: Path | None = None) -> None:
        library = find_novnc(novnc if novnc is not None else NOVNC_DIR)
        if library is None:
            raise ConfigError(f"{options.source}: noVNC not found in {novnc or NOVNC_DIR} (scripts/setup fetches it)")
        self._listener = _bind(options)
        self.web_root = make_web_root(library)
        self.address: tuple = self._listener.getsockname()
        target = f"{vnc_address[0]}:{vnc_address[1]}"
        watch_r, self._lifeline = os.pipe()  # kvmpy holds the write end for as long as it lives
        cmd = [sys.executable, "-c", _LAUNCHER, str(watch_r), "--inetd", "--web", str(self.web_root), target]
        try:
            self._proc = subprocess.Popen(cmd, stdin=self._listener.fileno(), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, cwd="/", close_fds=True, pass_fds=(watch_r,),
                                          start_new_session=True)
        except OSError as exc:
            os.close(self._lifeline)
            self._listener.close()
            shutil.rmtree(self.web_root, ignore_errors=True)
            raise ConfigError(f"{options.source}: cannot start websockify: {exc.strerror or exc}") from None
        finally:
            os.close(watch_r)
        self._listener.close()  # the child holds its copy; connections queue on it meanwhile
        self._closing = threading.Event()
        assert self._proc.stderr is not None
        self._logger = threading.Thread(target=self._forward_log, args=(self._proc.stderr,),
                                        name="web-log", daemon=True)
        self._logger.start()
        log.info("browser console on %s", self.url)

    @property
    def url(self) -> str:
        host, port = self.address[0], self.address[1]
        return f"http://{host}:{port}/"

    def running(self) -> bool:
        return self._proc.poll() is None

    def _forward_log(self, stream: IO[bytes]) -> None:
        tail: list[str] = []
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            log.debug("websockify: %s", line)
            tail = (tail + [line])[-5:]
        stream.close()
        code = self._proc.wait()
        if not self._closing.is_set():
            log.warning("the browser console's websockify exited (status %d): %s", code, " | ".join(tail))

    def close(self) -> None:
        self._closing.set()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._logger.join(timeout=STOP_TIMEOUT)
        try:
            os.close(self._lifeline)
        except OSError:
            pass
        shutil.rmtree(self.web_root, ignore_errors=True)


def start_web(options: WebOptions, vnc: VncServer | None, source: DisplaySource | None,
              keyboard: KeyboardSink | None, pointer: PointerSink | None,
              name: str | None = None) -> tuple[WebConsole, VncServer]:
    """The browser console bridged to ``vnc``, or to a new VNC server on a free loopback port when there is
    none (returned, so the machine shows and closes that one as its VNC server)."""
    server = vnc
    if server is None:
        server = VncServer(source if source is not None else BlankScreen(), "127.0.0.1", 0,
                           keyboard=keyboard, pointer=pointer,
                           name=f"kvmpy ({name})" if name else "kvmpy").start()
    try:
        return WebConsole(options, server.address), server
    except ConfigError:
        if vnc is None:
            server.close()
        raise


def environment_ready() -> str | None:
    """Why the browser console cannot run here (no noVNC, no websockify), or None when it can."""
    if find_novnc() is None:
        return f"noVNC not found in {NOVNC_DIR} (scripts/setup fetches it)"
    if importlib.util.find_spec("websockify") is None:
        return "Python package websockify is not installed"
    return None
