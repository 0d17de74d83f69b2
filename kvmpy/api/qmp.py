"""A QMP client for the API: one socket, one reader thread, commands in order, events to a callback.

QMP interleaves asynchronous events with command replies on one stream; the
reader thread sorts them: events go to ``on_event`` (the VM's EventLog),
replies to the command waiting for them. Commands are sent one at a time,
each with an ``id`` checked against its reply. Used for both modes: a child
kvmpy's ``-qmp`` socket and the in-process machine's private QMP server.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from kvmpy.api.errors import QMPError, VMError, VMGone

log = logging.getLogger(__name__)

UNIX_PATH_MAX = 107  # sun_path's 108 bytes, less the NUL
SOCKET_NAME = "qmp.sock"
MAX_MESSAGE = 16 << 20  # a QMP reply larger than this is refused, not buffered
GREETING_TIMEOUT = 30.0


def private_socket_dir(prefix: str) -> Path:
    """A new 0700 directory for a QMP socket (only this user can connect); under /tmp if $TMPDIR is too long."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    if len(str(d / SOCKET_NAME)) > UNIX_PATH_MAX:
        d.rmdir()
        d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    return d


class QmpConnection:
    """``QmpConnection(path)`` connects and negotiates; then ``execute(command, arguments)`` → QMP's ``return`` value."""

    def __init__(self, path: str, on_event: Callable[[dict[str, Any]], None] | None = None,
                 retry_for: float = 0.0, give_up: Callable[[], bool] = lambda: False) -> None:
        """``retry_for`` seconds, a refused connection is tried again (a server that is still starting
        up may have its socket in place before it listens), unless ``give_up()`` says it never will."""
        self._on_event = on_event
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()  # one command in flight
        self._ids = itertools.count(1)
        self._closed = False
        self._sock = self._connect(path, time.monotonic() + retry_for, give_up)
        self._reader = threading.Thread(target=self._read_loop, name="kvmpy-api-qmp", daemon=True)
        self._reader.start()
        self.greeting = self._next_reply(GREETING_TIMEOUT)
        if "QMP" not in self.greeting:
            self.close()
            raise VMError(f"{path} did not greet as a QMP server")
        self.execute("qmp_capabilities")

    @staticmethod
    def _connect(path: str, deadline: float, give_up: Callable[[], bool]) -> socket.socket:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(GREETING_TIMEOUT)
                sock.connect(path)
                sock.settimeout(None)
                return sock
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                sock.close()
                if time.monotonic() >= deadline or give_up():
                    raise VMError(f"cannot connect to the VM's QMP socket {path}: {exc.strerror or exc}") from None
                time.sleep(0.01)
            except OSError as exc:
                sock.close()
                raise VMError(f"cannot connect to the VM's QMP socket {path}: {exc.strerror or exc}") from None

    def _read_loop(self) -> None:
        buf = b""
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    if line.strip():
                        self._dispatch(json.loads(line))
                if len(buf) > MAX_MESSAGE:
                    log.warning("QMP: oversized message; dropping the connection")
                    break
        except (OSError, ValueError) as exc:
            if not self._closed:
                log.debug("QMP connection ended: %s", exc)
        finally:
            self._replies.put(None)  # wakes a waiting command: no reply will come

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if "event" in message:
            if self._on_event is not None:
                self._on_event(message)
        else:
            self._replies.put(message)

    def _next_reply(self, timeout: float | None) -> dict[str, Any]:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise VMError(f"QMP: no reply within {timeout} s") from None
        if reply is None:
            self._replies.put(None)  # every later caller must see the end too
            raise VMGone("the VM's QMP connection closed (has the VM exited?)")
        return reply

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = 60.0) -> Any:
        """Run one command; QMPError carries QMP's error class and description."""
        with self._lock:
            cid = f"api-{next(self._ids)}"
            msg: dict[str, Any] = {"execute": command, "id": cid}
            if arguments:
                msg["arguments"] = arguments
            try:
                self._sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError:
                raise VMGone(f"{command}: the VM's QMP connection is closed (has the VM exited?)") from None
            while True:
                reply = self._next_reply(timeout)
                if reply.get("id") != cid:
                    log.debug("QMP: dropping a reply for another id: %r", reply)
                    continue
                if "error" in reply:
                    err = reply["error"] if isinstance(reply["error"], dict) else {}
                    raise QMPError(command, str(err.get("class", "GenericError")), str(err.get("desc", err)))
                return reply.get("return")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._reader.is_alive() and self._reader is not threading.current_thread():
            self._reader.join(5)
