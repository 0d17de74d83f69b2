"""QMP set_link and HMP ``info network`` / ``set_link``, in QEMU 7.2's shapes, over the board's NICs.

A NIC is a virtio-net model behind one of the board's -device functions; it
is named by its -device id, or ``virtio-net-pci.N`` when it has none (N
counting the unnamed ones, as QEMU names them). ``set_link`` takes a NIC's
name or its netdev's id: either way the guest sees the link change (status
bit and a configuration interrupt) and the backend drops frames while down,
which is what a guest observes under QEMU for both names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.devices.virtio.net import VirtioNet, format_mac
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.schema import Arg, Command, CommandTable

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context

DEVICE_NOT_FOUND = "DeviceNotFound"


@dataclass(frozen=True)
class Nic:
    name: str
    model: VirtioNet


def board_nics(board: Any) -> list[Nic]:
    """Every virtio-net NIC of the board, in device-table order."""
    out = []
    anon = 0
    for fn in getattr(board, "devices", {}).values():
        model = getattr(fn, "device", None)
        if not isinstance(model, VirtioNet):
            continue
        name = model.nic_id
        if not name:
            name = f"virtio-net-pci.{anon}"
            anon += 1
        out.append(Nic(name, model))
    return out


def set_link(ctx: "Context", name: str, up: bool) -> dict:
    for nic in board_nics(ctx.machine.board):
        if name in (nic.name, nic.model.backend.id):
            nic.model.set_link(up)
            return {}
    raise QmpError(f"Device '{name}' not found", DEVICE_NOT_FOUND)


def info_network_text(ctx: "Context") -> str:
    out = []
    for nic in board_nics(ctx.machine.board):
        m = nic.model
        out.append(f"{nic.name}: index=0,type=nic,model=virtio-net-pci,macaddr={format_mac(m.mac)}\n")
        out.append(f" \\ {m.backend.id}: index=0,type={m.backend.info().replace(': ', ',', 1)}\n")
    return "".join(out)


def hmp_set_link(ctx: "Context", args: list[str]) -> str:
    """HMP ``set_link name on|off``."""
    if len(args) != 2 or args[1] not in ("on", "off"):
        return "set_link: expected a name and on|off\n"
    set_link(ctx, args[0], args[1] == "on")
    return ""


def add_net_commands(table: CommandTable) -> None:
    """Put set_link into ``table``."""
    # add() rather than command(): this command has an argument called "name"
    table.add(Command("set_link", set_link, {"name": Arg("str"), "up": Arg("bool")}))
