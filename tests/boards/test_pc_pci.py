"""-device PCI functions on the PC: QEMU's address rules and messages, and the table lines they become."""

from __future__ import annotations

import pytest

from kvmpy.boards.pc_pci import parse_addr, place
from kvmpy.config_devices import DeviceSpec
from kvmpy.errors import ConfigError


def dev(driver: str = "virtio-rng-pci", id: str | None = None, **props: str) -> DeviceSpec:
    text = ",".join([driver] + ([f"id={id}"] if id else []) + [f"{k}={v}" for k, v in props.items()])
    return DeviceSpec(driver, id, tuple(props.items()), source=f"-device {text}")


@pytest.mark.parametrize("text,want", [("5", (5, 0)), ("0x5", (5, 0)), ("10", (0x10, 0)), ("1f", (0x1F, 0)),
                                       ("0x1f.0", (0x1F, 0)), ("5.7", (5, 7)), ("03.1", (3, 1)), (" 5", (5, 0))])
def test_addr_is_parsed_as_qemu_does(text, want) -> None:
    assert parse_addr(dev(addr=text)) == want


@pytest.mark.parametrize("text", ["zz", "0x20", "3.9", "", "-1", "5.", ".1", "5.1.2", "20"])
def test_bad_addr_gets_qemus_message(text) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_addr(dev(addr=text))
    assert str(exc.value) == f"-device virtio-rng-pci,addr={text}: Property 'virtio-rng-pci.addr' doesn't take value '{text}'"


def test_first_free_slot_from_2_in_order_and_explicit_addresses() -> None:
    specs = (dev(), dev(addr="4"), dev(), dev(), dev("isa-debug-exit"), dev(id="r9", addr="0x1f.3"))
    got = [(p.slot, p.function, p.name) for p in place(specs)]
    assert got == [(2, 0, "virtio-rng-pci@02.0"), (4, 0, "virtio-rng-pci@04.0"), (3, 0, "virtio-rng-pci@03.0"),
                   (5, 0, "virtio-rng-pci@05.0"), (0x1F, 3, "virtio-rng-pci@1f.3")]


def test_taken_addresses_are_refused_with_qemus_message() -> None:
    with pytest.raises(ConfigError, match=r"^-device virtio-rng-pci,addr=1: PCI: slot 1 function 0 not available "
                                          r"for virtio-rng-pci, in use by PIIX3$"):
        place((dev(addr="1"),))
    with pytest.raises(ConfigError, match=r"^-device virtio-rng-pci,id=r1,addr=2: PCI: slot 2 function 0 not "
                                          r"available for virtio-rng-pci, in use by virtio-rng-pci,id=\(null\)$"):
        place((dev(), dev(id="r1", addr="2")))
    with pytest.raises(ConfigError, match="in use by virtio-rng-pci,id=r0$"):
        place((dev(id="r0", addr="2"), dev(id="r1", addr="2")))


def test_no_free_slot() -> None:
    with pytest.raises(ConfigError, match="PCI: no slot/function available for virtio-rng-pci, all in use"):
        place(tuple(dev() for _ in range(31)))


@pytest.mark.kvm_host
def test_a_device_line_is_built_reset_saved_and_restored_like_every_device() -> None:
    import time

    from kvmpy.config import MachineConfig
    from kvmpy.devices.chardev import BufferBackend
    from kvmpy.devices.virtio.pci import NOTIFY_OFF, VirtioPci
    from kvmpy.machine import Machine
    from tests.devices.virtio.pci_driver import BAR4_ADDR, BoardPorts, VirtioPciDriver
    from tests.guests.build import build_guest

    cfg = MachineConfig(kernel=build_guest("hello"), memory=32 << 20, no_reboot=True,
                        devices=(dev(id="rng0"), dev(id="rng1", addr="7", vectors="0"))).validate()

    def served(d: VirtioPciDriver, buf: int) -> list:
        q = d.queues[0]
        head = q.add([], [(buf, 64)])
        d.kick(0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            used = q.get_used()
            if used:
                return [u == (head, 64) for u in used]
            time.sleep(0.002)
        return []

    src, dst = Machine(cfg, BufferBackend()), Machine(cfg, BufferBackend())
    try:
        names = [n for n in src.board.devices if "@" in n]
        assert names == ["virtio-rng-pci@02.0", "virtio-rng-pci@07.0"]
        fn = src.board.devices[names[0]]
        assert isinstance(fn, VirtioPci) and fn.qdev_id == "rng0" and fn.msix is not None
        assert src.board.devices[names[1]].msix is None  # vectors=0: INTx only
        assert [(f.devfn >> 3, f.devfn & 7) for f in src.board.pci] == [(0, 0), (1, 0), (2, 0), (7, 0)]
        d = VirtioPciDriver(BoardPorts(src.board), fn)
        assert fn.kick_addresses() == {0: BAR4_ADDR + NOTIFY_OFF}  # the real KVM took the ioeventfd
        d.init(queue_base=0x100000)
        assert served(d, 0x200000) == [True]
        with src.lifecycle.vcpus_parked():  # quiesces the device, as a migration's switchover does
            sections = src.vmstate.capture()
        assert "dev/virtio-rng-pci@02.0" in sections and "dev/virtio-rng-pci@07.0" in sections
        dst.board.ram.mv[:] = src.board.ram.mv
        with dst.lifecycle.vcpus_parked():
            dst.vmstate.apply(sections)
        fn2 = dst.board.devices[names[0]]
        assert fn2.status == fn.status and fn2.kick_addresses() == {0: BAR4_ADDR + NOTIFY_OFF}
        assert fn2.quiesced  # the VM has not been started: the device waits for Lifecycle.resume()
        fn2.resume()  # what Lifecycle.resume() does just before the vCPUs run
        d.rig, d.fn = BoardPorts(dst.board), fn2
        d.queues[0].mem = dst.board.memory
        assert served(d, 0x300000) == [True]  # the restored device serves the next request
        dst.board.reset_devices()
        assert fn2.status == 0 and fn2.kick_addresses() == {}  # BAR4 unmapped with the reset config space
    finally:
        src.close()
        dst.close()
