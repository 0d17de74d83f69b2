"""``kvmpy-migrate``: move a running VM from one kvmpy (or QEMU) process to another through their QMP sockets.

    kvmpy-migrate SOURCE_QMP DEST_QMP --uri tcp:DESTHOST:PORT [--incoming tcp:0:PORT]

Both QMP addresses are ``unix:PATH`` or ``tcp:HOST:PORT``. The destination
must be waiting (``-incoming URI``, or ``-incoming defer`` plus ``--incoming``,
which this script sends as migrate-incoming). Progress (round, remaining,
rate) is shown on stderr while it runs; the final statistics go to stdout.
Exit status: 0 completed, 1 failed or cancelled, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any, Sequence

from kvmpy.config import ConfigError, parse_size


class QmpClientError(RuntimeError):
    pass


class QmpClient:
    """A minimal synchronous QMP client: one command at a time, events are skipped."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        kind, _, rest = address.partition(":")
        try:
            if kind == "unix" and rest:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(rest)
            elif kind == "tcp" and ":" in rest:
                host, _, port = rest.rpartition(":")
                self.sock = socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout)
            else:
                raise QmpClientError(f"invalid QMP address {address!r} (unix:PATH or tcp:HOST:PORT)")
        except (OSError, ValueError) as exc:
            raise QmpClientError(f"cannot connect to QMP at {address}: {exc}") from None
        self.address = address
        self.buf = b""
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpClientError(f"{address} is not a QMP server")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise QmpClientError(f"QMP connection to {self.address} failed: {exc}") from None
            if not data:
                raise QmpClientError(f"QMP connection to {self.address} closed (did the VM exit?)")
            self.buf += data
            if len(self.buf) > 16 << 20:
                raise QmpClientError(f"{self.address} sent an oversized QMP message")
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise QmpClientError(f"{self.address} sent malformed JSON") from None

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise QmpClientError(f"QMP connection to {self.address} failed: {exc}") from None
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QmpClientError(f"{command}: {reply['error'].get('desc', reply['error'])}")

    def close(self) -> None:
        self.sock.close()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmpy-migrate", description="Live-migrate a VM between two kvmpy processes "
                                "(or QEMU) through their QMP sockets.")
    p.add_argument("source", help="QMP address of the running VM: unix:PATH or tcp:HOST:PORT")
    p.add_argument("dest", help="QMP address of the waiting destination (started with -incoming)")
    p.add_argument("--uri", required=True, help="migration URI the source connects to, e.g. tcp:10.0.0.2:4444")
    p.add_argument("--incoming", help="send migrate-incoming URI to a destination started with -incoming defer")
    p.add_argument("--downtime-limit", type=int, help="ms (default 300)")
    p.add_argument("--max-bandwidth", help="bytes/s, with K/M/G suffixes (default 128M)")
    p.add_argument("--max-rounds", type=int, help="switch over after this many rounds (kvmpy only)")
    p.add_argument("--auto-converge", action="store_true", help="throttle a guest that dirties memory too fast")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up (and cancel) after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _progress(info: dict[str, Any], start: float) -> str:
    ram = info.get("ram", {})
    total = ram.get("total", 0) or 1
    remaining = ram.get("remaining", total)
    done = max(0.0, min(1.0, 1 - remaining / total))
    bar = "#" * int(done * 20)
    return (f"\r[{bar:<20}] round {ram.get('dirty-sync-count', 0):>3}  remaining {_mib(remaining):>11}  "
            f"rate {ram.get('mbps', 0):8.1f} Mbps  sent {_mib(ram.get('transferred', 0)):>11}  "
            f"{time.monotonic() - start:6.1f}s")


def run(args: argparse.Namespace) -> int:
    src = QmpClient(args.source)
    dst = QmpClient(args.dest)
    try:
        status = dst.execute("query-status")["status"]
        if status != "inmigrate":
            print(f"kvmpy-migrate: error: the destination is {status!r}, not waiting for a migration "
                  "(start it with -incoming)", file=sys.stderr)
            return 1
        if args.incoming:
            dst.execute("migrate-incoming", uri=args.incoming)
        params: dict[str, Any] = {}
        if args.downtime_limit is not None:
            params["downtime-limit"] = args.downtime_limit
        if args.max_bandwidth is not None:
            params["max-bandwidth"] = parse_size(args.max_bandwidth, "--max-bandwidth", default_unit=1)
        if args.max_rounds is not None:
            params["x-max-rounds"] = args.max_rounds
        if params:
            src.execute("migrate-set-parameters", **params)
        if args.auto_converge:
            src.execute("migrate-set-capabilities",
                        capabilities=[{"capability": "auto-converge", "state": True}])
        start = time.monotonic()
        src.execute("migrate", uri=args.uri)
        info: dict[str, Any] = {}
        try:
            while True:
                info = src.execute("query-migrate")
                if info.get("status") in ("completed", "failed", "cancelled"):
                    break
                if time.monotonic() - start > args.timeout:
                    src.execute("migrate_cancel")
                    print(f"\nkvmpy-migrate: error: timed out after {args.timeout:g} s; cancelled",
                          file=sys.stderr)
                    return 1
                if not args.quiet:
                    print(_progress(info, start), end="", file=sys.stderr, flush=True)
                time.sleep(0.2)
        except KeyboardInterrupt:
            src.execute("migrate_cancel")
            print("\nkvmpy-migrate: interrupted; migration cancelled, the source keeps running", file=sys.stderr)
            return 1
        if not args.quiet:
            print(_progress(info, start), file=sys.stderr)
        if info["status"] != "completed":
            why = info.get("error-desc", info["status"])
            print(f"kvmpy-migrate: error: migration {info['status']}: {why}; the source keeps running",
                  file=sys.stderr)
            return 1
        dest_state = "?"
        for _ in range(50):  # the destination starts right after the handover
            dest_state = dst.execute("query-status")["status"]
            if dest_state != "inmigrate":
                break
            time.sleep(0.1)
        ram = info.get("ram", {})
        print(f"status: completed\ntotal-time: {info.get('total-time')} ms\ndowntime: {info.get('downtime')} ms\n"
              f"setup-time: {info.get('setup-time')} ms\ntransferred: {ram.get('transferred')} bytes\n"
              f"rounds: {ram.get('dirty-sync-count')}\nduplicate (zero) pages: {ram.get('duplicate')}\n"
              f"normal pages: {ram.get('normal')}\nmbps: {ram.get('mbps')}\ndestination: {dest_state}")
        return 0
    finally:
        src.close()
        dst.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"kvmpy-migrate: error: {exc}", file=sys.stderr)
        return 2
    except QmpClientError as exc:
        print(f"kvmpy-migrate: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
