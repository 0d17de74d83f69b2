"""The QMP listening socket: a client that can see the path can always connect."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from kvmpy.monitor import endpoint
from kvmpy.monitor.endpoint import listen, parse_endpoint


def test_a_client_that_sees_the_socket_path_is_never_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Connect at the very moment the path appears (right after the rename into place). Before the
    # socket listened first, this connect was refused: a fast client (qemu.qmp, kvmpy.VM) lost the race.
    path = tmp_path / "q.sock"
    real_rename = os.rename
    outcome: list[str] = []

    def rename_then_connect(src, dst) -> None:
        real_rename(src, dst)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            try:
                c.connect(str(dst))
                outcome.append("connected")
            except ConnectionRefusedError:
                outcome.append("refused")

    monkeypatch.setattr(endpoint.os, "rename", rename_then_connect)
    sock = listen(parse_endpoint(f"unix:{path},server,wait=off"))
    try:
        assert outcome == ["connected"]
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    finally:
        sock.close()
