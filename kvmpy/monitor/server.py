"""QmpServer: serves QMP on one or more endpoints from its own thread, for any number of clients.

An asyncio loop runs in a daemon thread and owns every socket; vCPU threads
never touch it. Commands run one at a time on a single worker thread (so a
command that waits for vCPUs to park never blocks other clients' I/O) and in
order per client. Machine events arrive from any thread and are handed to the
loop with ``call_soon_threadsafe``. A client that stops reading is dropped
once its unsent output passes a bound, so nothing a client does can stall
the VM or grow memory without limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmpy.monitor import protocol
from kvmpy.monitor.context import PACKAGE, QEMU_VERSION, Context
from kvmpy.monitor.endpoint import Endpoint, listen
from kvmpy.monitor.protocol import COMMAND_NOT_FOUND, QmpError, Request
from kvmpy.monitor.schema import CommandTable

if TYPE_CHECKING:
    from kvmpy.machine import Machine

log = logging.getLogger(__name__)

MAX_CLIENTS = 64
MAX_PENDING_OUTPUT = 4 << 20  # bytes queued for a client that is not reading
READ_CHUNK = 64 * 1024


@dataclass(eq=False)
class Session:
    writer: asyncio.StreamWriter
    negotiated: bool = False
    closed: bool = False
    peer: str = ""

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self.writer.write(protocol.encode(message))
        if self.writer.transport.get_write_buffer_size() > MAX_PENDING_OUTPUT:
            log.warning("QMP client %s is not reading its replies; disconnecting it", self.peer)
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


@dataclass
class _Listener:
    endpoint: Endpoint
    sock: socket.socket
    server: asyncio.AbstractServer | None = None
    address: Any = None
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of our UNIX socket file: unlink only that


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class QmpServer:
    """``start()`` binds every endpoint (errors surface here), then serves until ``close()``.

    ``commands`` is the whole command table this server offers (e.g. the core
    commands plus migration's); it must hold ``qmp_capabilities``.
    """

    def __init__(self, machine: "Machine", endpoints: list[Endpoint], commands: CommandTable) -> None:
        self.machine = machine
        self.commands = commands
        self.endpoints = list(endpoints)
        self._listeners: list[_Listener] = []
        self._sessions: set[Session] = set()
        self._tasks: set[asyncio.Task] = set()
        self._replying = 0  # commands between dispatch and their reply written (loop thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._first_client = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="qmp-cmd")
        self._closed = False

    # ---- life ------------------------------------------------------------------
    def start(self) -> None:
        for ep in self.endpoints:
            try:
                sock = listen(ep)
            except Exception:
                self._close_sockets()
                raise
            inode = _inode(ep.path) if ep.kind == "unix" and ep.path is not None else None
            self._listeners.append(_Listener(ep, sock, address=sock.getsockname(), inode=inode))
        self._thread = threading.Thread(target=self._main, name="qmp", daemon=True)
        self._thread.start()
        self._ready.wait()
        self.machine.lifecycle.add_event_listener(self._on_machine_event)

    @property
    def addresses(self) -> list[Any]:
        """What each endpoint is bound to: a path, or (host, port) with the real port."""
        return [l.address for l in self._listeners]

    def needs_client(self) -> bool:
        return any(l.endpoint.wait for l in self._listeners)

    def wait_for_client(self, timeout: float | None = None) -> bool:
        """Block until a client has connected (QEMU's ``server`` without ``wait=off``)."""
        return self._first_client.wait(timeout)

    def close(self) -> None:
        """Flush what is queued (e.g. the SHUTDOWN event), disconnect everyone, remove UNIX sockets."""
        if self._closed:
            return
        self._closed = True
        self.machine.lifecycle.remove_event_listener(self._on_machine_event)
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                fut.result(timeout=5)
            except Exception:
                log.warning("QMP server did not shut down cleanly", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for l in self._listeners:
            try:
                l.sock.close()
            except OSError:
                pass
            self._unlink(l)

    @staticmethod
    def _unlink(l: _Listener) -> None:
        """Remove our UNIX socket file, never one a newer kvmpy has since put at the same path."""
        path = l.endpoint.path
        if l.endpoint.kind == "unix" and path is not None and l.inode is not None and _inode(path) == l.inode:
            try:
                path.unlink()
            except OSError:
                pass
        l.inode = None

    def _stop_listening(self) -> None:
        """On SHUTDOWN (loop thread): accept no one else, and take the socket path away at once.

        Connected clients still get the SHUTDOWN event. A script that starts the next VM on the
        same path must not reach this exiting one (it would be greeted, then hung up on).
        """
        for l in self._listeners:
            if l.server is not None:
                l.server.close()
            self._unlink(l)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen_all())
        finally:
            self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen_all(self) -> None:
        for l in self._listeners:
            if l.endpoint.kind == "unix":
                l.server = await asyncio.start_unix_server(self._client, sock=l.sock, limit=READ_CHUNK)
            else:
                l.server = await asyncio.start_server(self._client, sock=l.sock, limit=READ_CHUNK)

    async def _shutdown(self) -> None:
        for l in self._listeners:
            if l.server is not None:
                l.server.close()
        # A command that ended the VM (quit) still owes its client the reply, as QEMU sends it before
        # SHUTDOWN's effects: let in-flight replies reach their clients before hanging up.
        deadline = asyncio.get_running_loop().time() + 2
        while self._replying and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        for s in list(self._sessions):
            s.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for s in list(self._sessions):
            try:
                await asyncio.wait_for(s.writer.wait_closed(), 1)
            except (Exception, asyncio.CancelledError):
                pass

    # ---- events (any thread) -----------------------------------------------------
    def _on_machine_event(self, name: str, data: dict[str, Any] | None) -> None:
        msg = protocol.event(name, data)  # timestamp taken now, in the emitting thread
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            if name == "SHUTDOWN":  # first: a client that has seen SHUTDOWN finds the path gone
                loop.call_soon_threadsafe(self._stop_listening)
            loop.call_soon_threadsafe(self._broadcast, msg)
        except RuntimeError:  # the loop is already closed
            pass

    def _broadcast(self, msg: dict[str, Any]) -> None:
        for s in list(self._sessions):
            if s.negotiated:
                s.send(msg)

    # ---- one client ------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername") or "unix client")
        session = Session(writer, peer=peer)
        if len(self._sessions) >= MAX_CLIENTS or self._closed:
            log.warning("QMP: refusing %s: %d clients already connected", peer, MAX_CLIENTS)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._sessions.add(session)
        self._first_client.set()
        log.info("QMP client %s connected", peer)
        try:
            session.send({"QMP": {"version": {"qemu": dict(QEMU_VERSION), "package": PACKAGE},
                                  "capabilities": []}})
            splitter = protocol.JsonSplitter()
            while not session.closed:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                for item in splitter.feed(data):
                    if session.closed:
                        break
                    if isinstance(item, QmpError):
                        session.send(protocol.error_reply(item))
                        continue
                    self._replying += 1
                    try:
                        session.send(await self._handle(session, item))
                        await writer.drain()
                    finally:
                        self._replying -= 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug here must cost one client its connection, never the VM
            log.exception("QMP session %s failed", peer)
        finally:
            self._sessions.discard(session)
            self._tasks.discard(task)
            session.close()
            log.info("QMP client %s disconnected", peer)

    async def _handle(self, session: Session, text: bytes) -> dict[str, Any]:
        try:
            req = protocol.parse_request(text)
        except QmpError as exc:
            return protocol.error_reply(exc, getattr(exc, "id", None), getattr(exc, "has_id", False))
        loop = asyncio.get_running_loop()
        try:
            if not session.negotiated:
                value = self._negotiate(session, req)
            else:
                value = await loop.run_in_executor(self._executor, self._execute, session, req)
        except QmpError as exc:
            return protocol.error_reply(exc, req.id, req.has_id)
        return protocol.reply(value, req.id, req.has_id)

    def _negotiate(self, session: Session, req: Request) -> dict:
        if req.command != "qmp_capabilities":
            raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'", COMMAND_NOT_FOUND)
        args = self.commands.get("qmp_capabilities").validate(req.arguments)
        if args.get("enable"):
            raise QmpError(f"Capability '{args['enable'][0]}' not available")
        session.negotiated = True
        return {}

    def _execute(self, session: Session, req: Request) -> Any:
        try:
            return self.commands.dispatch(Context(self.machine, session, self.commands), req.command,
                                          req.arguments)
        except QmpError:
            raise
        except Exception as exc:  # a handler bug: report it, keep serving
            log.exception("QMP command %s failed", req.command)
            raise QmpError(f"internal error in {req.command}: {exc}") from None
