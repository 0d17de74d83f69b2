"""QMP screendump, query-vnc, change-vnc-password, send-key and input-send-event, and HMP screendump,
sendkey and info vnc, in QEMU 7.2's shapes.

The screen comes from the board's display adapter (through the VNC server when one
runs, so its viewers see the same refresh); keys and pointer events go to the board's
i8042 (PS/2 keyboard and mouse). Like QEMU with only a PS/2 mouse, absolute pointer
events have no device to go to and are dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from kvmpy.devices.i8042 import I8042
from kvmpy.kvm.errors import KvmError
from kvmpy.lifecycle import RunState
from kvmpy.devices.scancodes import QCODES, QNUM_TO_QCODE
from kvmpy.display.console import find_display_source
from kvmpy.display.screendump import FORMATS
from kvmpy.display.surface import Frame
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.schema import Arg, Command, CommandTable

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context

log = logging.getLogger(__name__)

DEFAULT_HOLD_MS = 100  # QEMU's send-key hold-time default
MAX_KEYS = 16  # keys in one HMP sendkey (QEMU's limit)
MAX_QMP_KEYS = 256  # keys in one QMP send-key: QEMU sets no limit, the message size does
# The contract's button bits (kvmpy.display.surface.PointerSink) by QEMU's InputButton names.
BUTTONS = {"left": 1, "middle": 2, "right": 4, "wheel-up": 8, "wheel-down": 16}
_NUMBERS = QNUM_TO_QCODE  # QEMU's "number" key values


def _board(ctx: "Context") -> Any:
    return ctx.machine.board


def _i8042(ctx: "Context") -> I8042:
    dev = getattr(_board(ctx), "devices", {}).get("i8042")
    if not isinstance(dev, I8042):
        raise QmpError("No keyboard or mouse on this machine")
    return dev


def current_frame(ctx: "Context") -> Frame:
    """The screen now; QmpError as QEMU's when no device drives a display."""
    board = _board(ctx)
    source = find_display_source(getattr(board, "devices", {}).values())
    if source is None:
        raise QmpError("There is no console to take a screendump from")
    vnc = getattr(board, "vnc", None)
    return vnc.refresh_now() if vnc is not None else source.refresh().frame


def screendump(ctx: "Context", filename: str, device: str | None = None, head: int | None = None,
               format: str = "ppm") -> dict:
    if device is not None or head is not None:
        raise QmpError("device and head are not supported by kvmpy (one console)")
    data = FORMATS[format](current_frame(ctx))
    try:
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as exc:
        raise QmpError(f"failed to open file '{filename}': {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise QmpError(f"failed to write file '{filename}': {exc.strerror}") from None
    return {}


def query_vnc(ctx: "Context") -> dict:
    vnc = getattr(_board(ctx), "vnc", None)
    if vnc is None:
        return {"enabled": False}
    host, port = vnc.address[0], vnc.address[1]
    return {"enabled": True, "host": host, "service": str(port), "family": "ipv6" if ":" in host else "ipv4",
            "auth": "vnc" if vnc.password_required else "none",
            "clients": [{"host": c.host, "service": c.service, "family": c.family, "websocket": c.websocket}
                        for c in vnc.clients]}


def change_vnc_password(ctx: "Context", password: str) -> dict:
    vnc = getattr(_board(ctx), "vnc", None)
    if vnc is None or not vnc.password_required:  # QEMU: only a display started with password=on takes one
        raise QmpError("Could not set password")
    vnc.set_password(password)
    return {}


def _qcode(key: Any, where: str) -> str | None:
    """A KeyValue ({type: qcode|number, data}) as a QKeyCode name this keyboard has; None for a
    number no key has (QEMU accepts and drops those). Errors are worded as QEMU's visitor's."""
    if not isinstance(key, dict) or set(key) != {"type", "data"}:
        raise QmpError(f"Parameter '{where}' expects a KeyValue: {{'type': 'qcode'|'number', 'data': ...}}")
    kind, data = key["type"], key["data"]
    if kind == "qcode":
        if not isinstance(data, str):
            raise QmpError("Invalid parameter type for 'data', expected: string")
        if data not in QCODES:
            raise QmpError(f"Parameter 'data' does not accept value '{data[:64]}'")
        return data
    if kind == "number":
        if not isinstance(data, int) or isinstance(data, bool):
            raise QmpError("Invalid parameter type for 'data', expected: integer")
        return _NUMBERS.get(data)
    raise QmpError(f"Parameter 'type' does not accept value '{str(kind)[:64]}'")


def press_keys(kbd: I8042, qcodes: list[str], hold_ms: int) -> None:
    """Presses the keys in order, and releases them in reverse order ``hold_ms`` later (without
    blocking the monitor, as QEMU's timer does)."""
    for q in qcodes:
        kbd.key_event(q, True)

    def release() -> None:
        try:
            for q in reversed(qcodes):
                kbd.key_event(q, False)
        except (OSError, KvmError) as exc:  # the machine closed within the hold time: its irqchip is gone, nothing to release
            log.debug("send-key: release after the machine closed: %s", exc)

    timer = threading.Timer(hold_ms / 1000, release)
    timer.daemon = True
    timer.start()


def send_key(ctx: "Context", keys: list, hold_time: int | None = None) -> dict:
    if len(keys) > MAX_QMP_KEYS:
        raise QmpError(f"Parameter 'keys' expects at most {MAX_QMP_KEYS} keys")
    qcodes = [q for q in (_qcode(k, f"keys[{i}]") for i, k in enumerate(keys)) if q is not None]
    if qcodes:
        press_keys(_i8042(ctx), qcodes, DEFAULT_HOLD_MS if hold_time is None else hold_time)
    return {}


def input_send_event(ctx: "Context", events: list, device: str | None = None, head: int | None = None) -> dict:
    """Key, button and relative-motion events, delivered as QEMU does: keys at once, the pointer's
    motion and buttons summed into one report at the end (its sync)."""
    if device is not None or head is not None:
        raise QmpError("device and head are not supported by kvmpy")
    if ctx.machine.lifecycle.state is not RunState.RUNNING:  # QEMU refuses input to a stopped VM
        raise QmpError("VM not running")
    dev = _i8042(ctx)
    plan: list[tuple[str, Any]] = []
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, dict) or set(ev) != {"type", "data"} or not isinstance(ev["data"], dict):
            raise QmpError(f"Parameter '{where}' expects an InputEvent: {{'type': ..., 'data': {{...}}}}")
        kind, data = ev["type"], ev["data"]
        if kind == "key":
            _members(data, {"down": bool, "key": dict}, where)
            qcode = _qcode(data["key"], f"{where}.data.key")
            if qcode is not None:
                plan.append(("key", (qcode, data["down"])))
        elif kind == "btn":
            _members(data, {"down": bool, "button": str}, where)
            if data["button"] not in BUTTONS:
                raise QmpError(f"Parameter 'button' does not accept value '{data['button'][:64]}'")
            plan.append(("btn", (BUTTONS[data["button"]], data["down"])))
        elif kind in ("rel", "abs"):
            _members(data, {"axis": str, "value": int}, where)
            if data["axis"] not in ("x", "y"):
                raise QmpError(f"Parameter 'axis' does not accept value '{data['axis'][:64]}'")
            plan.append((kind, (data["axis"], data["value"])))
        else:
            raise QmpError(f"Parameter 'type' does not accept value '{str(kind)[:64]}'")
    mouse = dev.mouse
    ps2 = mouse.buttons  # PS/2 bits: left 1, right 2, middle 4
    buttons = (ps2 & 1) | (2 if ps2 & 4 else 0) | (4 if ps2 & 2 else 0)
    dx = dy = 0
    pointer = False
    for kind, args in plan:
        if kind == "key":
            dev.key_event(*args)
        elif kind == "btn":
            bit, down = args
            buttons = buttons | bit if down else buttons & ~bit
            pointer = True
        elif kind == "rel":
            axis, value = args
            dx, dy = (dx + value, dy) if axis == "x" else (dx, dy + value)
            pointer = True
        else:
            log.debug("input-send-event: no absolute pointing device; dropped %s", args)
    if pointer:
        dev.pointer_event(dx, dy, buttons)
    return {}


def _members(data: dict, types: dict[str, type], where: str) -> None:
    for key, want in types.items():
        value = data.get(key)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise QmpError(f"Parameter '{where}.data.{key}' is missing or not a {want.__name__}")
    extra = set(data) - set(types)
    if extra:
        raise QmpError(f"Parameter '{where}.data.{sorted(extra)[0]}' is unexpected")


# ---- HMP ---------------------------------------------------------------------

_HMP_USAGE = '{}\nTry "help sendkey" for more information\n'


def hmp_sendkey(ctx: "Context", args: list[str]) -> str:
    """``sendkey ctrl-alt-f1 [hold_ms]``: keys by QKeyCode name or number (0x1d), joined by '-'."""
    if not args:
        return _HMP_USAGE.format("sendkey: string expected")
    if len(args) > 2 or (len(args) == 2 and (not args[1].isdigit() or len(args[1]) > 9)):
        return _HMP_USAGE.format("sendkey: extraneous characters at the end of line")
    qcodes = []
    for name in args[0].split("-"):
        if name in QCODES:
            qcodes.append(name)
            continue
        try:
            number = int(name, 0)
        except ValueError:
            number = -1
        if number not in _NUMBERS:
            return f"invalid parameter: {name[:64]}\n"
        qcodes.append(_NUMBERS[number])
    if len(qcodes) > MAX_KEYS:
        return "too many keys\n"
    press_keys(_i8042(ctx), qcodes, int(args[1]) if len(args) == 2 else DEFAULT_HOLD_MS)
    return ""


def hmp_screendump(ctx: "Context", args: list[str]) -> str:
    """``screendump [-f ppm|png] filename`` (QEMU 7.2's HMP form, without device and head)."""
    fmt = "ppm"
    if args[:1] == ["-f"]:
        if len(args) < 2 or args[1] not in FORMATS:
            return f"Error: Parameter 'format' does not accept value '{args[1] if len(args) > 1 else ''}'\n"
        fmt, args = args[1], args[2:]
    if len(args) != 1:
        return "screendump: expected [-f ppm|png] filename\n"
    screendump(ctx, args[0], format=fmt)
    return ""


def info_vnc_text(ctx: "Context") -> str:
    """HMP ``info vnc``, laid out as QEMU 7.2's (the one display is QEMU's "default")."""
    info = query_vnc(ctx)
    if not info["enabled"]:
        return "None\n"
    out = ["default:\n", f"  Server: {info['host']}:{info['service']} ({info['family']})\n",
           f"    Auth: {info['auth']} (Sub: none)\n"]
    for c in info["clients"]:
        out.append(f"  Client: {c['host']}:{c['service']} ({c['family']})\n"
                   "    x509_dname: none\n    sasl_username: none\n")
    return "".join(out)


def add_display_commands(table: CommandTable) -> None:
    """Put screendump, query-vnc, change-vnc-password, send-key and input-send-event into ``table``."""
    table.add(Command("screendump", screendump, {
        "filename": Arg("str"), "device": Arg("str", optional=True), "head": Arg("int", optional=True),
        "format": Arg("str", optional=True, choices=tuple(FORMATS))}))
    table.command("query-vnc")(query_vnc)
    table.command("change-vnc-password", password=Arg("str"))(change_vnc_password)
    table.command("send-key", keys=Arg("list", items=Arg("dict")),
                  hold_time=Arg("int", optional=True, min=0, max=60000))(send_key)
    table.command("input-send-event", events=Arg("list", items=Arg("dict")), device=Arg("str", optional=True),
                  head=Arg("int", optional=True))(input_send_event)
