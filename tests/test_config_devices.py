"""Device options in the machine config (kvmpy.config_devices): specs, QEMU's implicit devices, ids, references.

QEMU 7.2 is the oracle for what is accepted: each case runs ``qemu-system-x86_64 ... -S -qmp stdio``
(quit at once) and kvmpy's front end on the same options, and both must agree.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy import config_devices as cd
from kvmpy.cli import HelpRequested, main, parse_qemu_args
from kvmpy.config import BOARDS, MachineConfig, load_yaml
from kvmpy.config_devices import (BlockdevSpec, ChardevSpec, DeviceSpec, DriveSpec, NetdevSpec, ObjectSpec,
                                  check_devices)
from kvmpy.errors import ConfigError

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is the oracle")


def _cfg(*args: str) -> MachineConfig:
    return parse_qemu_args(["-enable-kvm", "-kernel", "/etc/hostname", *args])


def _front_end_accepts(args: list[str]) -> bool:
    """kvmpy's parse plus the config-level checks QEMU also makes (not the board's 'not built yet')."""
    try:
        c = _cfg(*args)
        check_devices(c.devices, c.drives, c.blockdevs, c.netdevs, c.chardevs, c.objects)
    except ConfigError:
        return False
    return True


def _qemu_accepts(args: list[str], machine: str = "pc") -> tuple[bool, str]:
    p = subprocess.run([QEMU, "-M", machine, "-nodefaults", "-display", "none", "-S", "-qmp", "stdio", *args],
                       input=b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n', capture_output=True, timeout=60)
    return p.returncode == 0, p.stderr.decode(errors="replace")


def test_specs_from_the_command_line(tmp_path: Path) -> None:
    img = tmp_path / "d.qcow2"
    img.write_bytes(b"")
    c = _cfg("-netdev", "user,id=n0,hostfwd=tcp::2222-:22", "-device", "virtio-net,netdev=n0,mac=52:54:00:00:00:01",
             "-drive", f"file={img},if=virtio,format=qcow2,cache=none,aio=native",
             "-drive", f"file={img},if=none,id=d1,readonly=on", "-device", "virtio-blk-pci,drive=d1,id=disk1",
             "-chardev", "socket,id=c0,path=/tmp/s,server=on,wait=off", "-object", "rng-random,id=rng0,filename=/dev/urandom")
    assert c.netdevs == (NetdevSpec("user", "n0", (("hostfwd", "tcp::2222-:22"),)),)
    net, blk1, blk0 = c.devices  # explicit devices first, then the implicit one, as QEMU creates them
    assert (net.driver, net.get("netdev"), net.get("mac")) == ("virtio-net-pci", "n0", "52:54:00:00:00:01")
    assert (blk1.driver, blk1.id, blk1.get("drive"), blk1.implicit) == ("virtio-blk-pci", "disk1", "d1", False)
    assert (blk0.driver, blk0.props, blk0.implicit) == ("virtio-blk-pci", (("drive", "virtio0"),), True)
    d0, d1 = c.drives
    assert (d0.id, d0.index, d0.interface, d0.format, d0.cache, d0.cache_direct, d0.readonly) == \
        ("virtio0", 0, "virtio", "qcow2", "none", True, False)
    assert d0.get("aio") == "native" and (d1.id, d1.interface, d1.readonly) == ("d1", "none", True)
    ch = c.chardevs[0]
    assert (ch.backend, ch.id, ch.path, ch.server, ch.wait) == ("socket", "c0", "/tmp/s", True, False)
    assert c.objects == (ObjectSpec("rng-random", "rng0", (("filename", "/dev/urandom"),)),)


def test_nic_is_a_netdev_and_its_card_ahead_of_the_devices() -> None:
    c = _cfg("-device", "virtio-rng-pci", "-nic", "user,model=virtio,mac=52:54:00:00:00:09,hostfwd=tcp::2-:22",
             "-nic", "none")
    nic, rng = c.devices
    assert (nic.driver, nic.props, rng.driver) == (
        "virtio-net-pci", (("netdev", "__org.qemu.nic0"), ("mac", "52:54:00:00:00:09")), "virtio-rng-pci")
    assert c.netdevs == (NetdevSpec("user", "__org.qemu.nic0", (("hostfwd", "tcp::2-:22"),)),)
    for args, message in ((["-nic", "user"], "Unsupported NIC model: 'e1000' .QEMU's default"),
                          (["-nic", "user,model=rtl8139"], "Unsupported NIC model: 'rtl8139'"),
                          (["-nic", "bogus,model=virtio"], "Parameter 'type' does not accept value 'bogus'")):
        with pytest.raises(ConfigError, match=message):
            _cfg(*args)


def test_json_forms_give_the_same_specs() -> None:
    assert _cfg("-device", '{"driver": "virtio-net", "netdev": "n0", "id": "nic0", "mq": true, "vectors": 4}'
                ).devices == _cfg("-device", "virtio-net-pci,netdev=n0,id=nic0,mq=on,vectors=4").devices
    assert _cfg("-netdev", '{"type": "user", "id": "n0"}').netdevs == _cfg("-netdev", "user,id=n0").netdevs
    assert _cfg("-object", '{"qom-type": "memory-backend-ram", "id": "m0", "size": 1048576}').objects == \
        (ObjectSpec("memory-backend-ram", "m0", (("size", "1048576"),)),)
    for text, message in (('{"driver": "virtio-net-pci", "x": [1]}', "takes text, numbers and booleans"),
                          ('{"driver": "virtio-net-pci", "id": "1"}', "Parameter 'id' expects an identifier"),
                          ('{"driver": "virtio-net-pci",}', "JSON parse error")):
        with pytest.raises(ConfigError, match=message):
            _cfg("-device", text)


def test_cache_modes_are_qemus() -> None:
    def flags(mode: str) -> tuple[bool, bool, bool]:
        d = DriveSpec(file=Path("x"), cache=mode)
        return d.cache_direct, d.cache_no_flush, d.write_cache
    assert flags("writeback") == (False, False, True) and flags("none") == (True, False, True)
    assert flags("writethrough") == (False, False, False) and flags("directsync") == (True, False, False)
    assert flags("unsafe") == (False, True, True)
    assert DriveSpec(file=Path("x"), props=(("cache.direct", "on"),)).cache_direct


def test_drive_numbering_is_qemus() -> None:
    c = MachineConfig(drives=(DriveSpec(file=Path("a"), interface="virtio"), DriveSpec(file=Path("b"), interface="virtio"),
                              DriveSpec(file=Path("c"), index=0), DriveSpec(file=None, index=2, media="cdrom"),
                              DriveSpec(file=Path("e"), interface="none")))
    assert [d.id for d in c.drives] == ["virtio0", "virtio1", "ide0-hd0", "ide1-cd0", "none0"]
    assert [d.get("drive") for d in c.devices] == ["virtio0", "virtio1"]
    # rebuilding a config from its own fields does not add the implicit devices twice
    again = MachineConfig(drives=c.drives, devices=c.devices)
    assert again.devices == c.devices


def test_legacy_drive_options(tmp_path: Path) -> None:
    c = _cfg("-hda", "/etc/hostname", "-hdb", "/etc/hostname", "-cdrom", "/etc/hostname", "-hdd", "/etc/hostname")
    assert [(d.index, d.media, d.interface, d.id) for d in c.drives] == [
        (0, "disk", "ide", "ide0-hd0"), (1, "disk", "ide", "ide0-hd1"), (2, "cdrom", "ide", "ide1-cd0"),
        (3, "disk", "ide", "ide1-hd1")]
    assert c.drives[2].readonly
    positional = _cfg("/etc/hostname").drives
    assert [(d.index, d.source) for d in positional] == [(0, "/etc/hostname")]


def test_blockdev_keyval_and_json_give_the_same_spec() -> None:
    kv = _cfg("-blockdev", "driver=qcow2,node-name=disk0,file.driver=file,file.filename=/tmp/d.qcow2").blockdevs[0]
    js = _cfg("-blockdev", '{"driver": "qcow2", "node-name": "disk0", '
                           '"file": {"driver": "file", "filename": "/tmp/d.qcow2"}}').blockdevs[0]
    assert kv == js == BlockdevSpec("qcow2", "disk0", (("file.driver", "file"), ("file.filename", "/tmp/d.qcow2")))
    assert kv.tree() == {"driver": "qcow2", "node-name": "disk0", "file": {"driver": "file", "filename": "/tmp/d.qcow2"}}
    assert not kv.readonly and _cfg("-blockdev", '{"driver":"raw","node-name":"r","read-only":true,'
                                                 '"file":{"driver":"file","filename":"/x"}}').blockdevs[0].readonly


@pytest.mark.parametrize("args, message", [
    (["-device", "e1000"], "unsupported device 'e1000'"),
    (["-device", "virtio-net-pci,netdev=n0"], "Property 'virtio-net-device.netdev' can't find value 'n0'"),
    (["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-net-pci,netdev=n0"],
     "Property 'virtio-net-device.netdev' can't take value 'n0', it's in use"),
    (["-device", "virtio-blk-pci,drive=nod"], "Property 'virtio-blk-device.drive' can't find value 'nod'"),
    (["-drive", "file=/etc/hostname,if=virtio", "-device", "virtio-blk-pci,drive=virtio0"],
     "Drive 'virtio0' is already in use because it has been automatically connected to another device"),
    (["-drive", "file=/etc/hostname,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
      "-device", "virtio-blk-pci,drive=d0"], "Drive 'd0' is already in use by another device"),
    (["-chardev", "null,id=c0", "-device", "virtconsole,chardev=c0", "-device", "virtconsole,chardev=c0"],
     "Property 'virtconsole.chardev' can't take value 'c0': Device 'c0' is in use"),
    (["-device", "pc-dimm,memdev=m9"], "Device 'm9' not found"),
    (["-netdev", "user,id=a", "-netdev", "user,id=a"], "-netdev user,id=a: Duplicate ID 'a' for netdev"),
    (["-chardev", "null,id=c", "-chardev", "null,id=c"], "Duplicate ID 'c' for chardev"),
    (["-device", "virtio-rng-pci,id=x", "-device", "virtio-rng-pci,id=x"], "Duplicate ID 'x' for device"),
    (["-drive", "file=/etc/hostname,if=none,id=d", "-drive", "file=/etc/hostname,if=none,id=d"],
     "Duplicate ID 'd' for drive"),
    (["-blockdev", "driver=file,node-name=a,filename=/x", "-drive", "file=/etc/hostname,if=none,id=a"],
     "Device name 'a' conflicts with an existing node name"),
    (["-hda", "/etc/hostname", "-drive", "file=/etc/hostname,index=0"], "drive with bus=0, unit=0 (index=0) exists"),
    (["-cdrom", "/etc/hostname", "-hdc", "/etc/hostname"], "drive with bus=1, unit=0 (index=2) exists"),
    (["-netdev", "bogus,id=a"], "Parameter 'type' does not accept value 'bogus'"),
    (["-netdev", "user"], "Parameter 'id' is missing"),
    (["-netdev", "user,id="], "Parameter 'id' expects an identifier"),
    (["-chardev", "null"], "chardev: no id specified"),
    (["-chardev", "bogus,id=c"], "'bogus' is not a valid char driver name"),
    (["-chardev", "file,id=c"], "chardev: file: no filename given"),
    (["-chardev", "socket,id=c,host=localhost"], "chardev: socket: no port given"),
    (["-chardev", "socket,id=c,port=99999"], "Parameter 'port' expects a number"),
    (["-chardev", "socket,id=c,path=/s,server=maybe"], "Parameter 'server' expects 'on' or 'off'"),
    (["-chardev", "null,id=c,mux=on"], "Invalid parameter 'mux'"),
    (["-object", "bogus,id=m0"], "Parameter 'qom-type' does not accept value 'bogus'"),
    (["-object", "memory-backend-ram,size=1M"], "Parameter 'id' is missing"),
    (["-drive", "file=/etc/hostname,if=bogus"], "unsupported bus type 'bogus'"),
    (["-drive", "file=/etc/hostname,cache=bogus"], "invalid cache option"),
    (["-drive", "file=/etc/hostname,media=floppy"], "'floppy' invalid media"),
    (["-drive", "file=/etc/hostname,format=vmdk"], "Unknown driver 'vmdk'"),
    (["-drive", "file=/etc/hostname,aio=native"], "aio=native was specified, but it requires cache.direct=on"),
    (["-drive", "file=/etc/hostname,aio=bogus"], "invalid aio option"),
    (["-drive", "file=/etc/hostname,readonly=maybe"], "Parameter 'read-only' expects 'on' or 'off'"),
    (["-drive", "file=/etc/hostname,index=x"], "Parameter 'index' expects a number"),
    (["-drive", "if=none,id=x"], "Must specify either driver or file"),
    (["-drive", "file=/etc/hostname,bogus=1"], "Invalid parameter 'bogus'"),
    (["-drive", "file=/nonexistent/x,if=virtio"], "Could not open '/nonexistent/x'"),
    (["-blockdev", "driver=raw,file.driver=file,file.filename=/x"], "'node-name' must be specified for the root"),
    (["-blockdev", "driver=raw,node-name=1a,file.driver=file,file.filename=/x"], "Invalid node-name: '1a'"),
    (["-blockdev", "driver=raw,node-name=" + "a" * 32 + ",file.driver=file,file.filename=/x"], "Node name too long"),
    (["-blockdev", "driver=bogus,node-name=a"], "Parameter 'driver' does not accept value 'bogus'"),
    (["-blockdev", "[1]"], "Parameter 'driver' does not accept value '[1]'"),
    (["-blockdev", "driver=raw,node-name=a,file.driver=vvfat"], "Parameter 'driver' does not accept value 'vvfat'"),
    (["-serial", "chardev:c9"], "chardev 'c9' not found"),
    (["-chardev", "stdio,id=c", "-serial", "chardev:c", "-chardev", "stdio,id=d"],
     "-chardev stdio,id=d: cannot use stdio by multiple character devices"),
    (["-chardev", "stdio,id=c"], "cannot use stdio by multiple character devices"),  # -serial stdio is the default
])
def test_mistakes_are_qemus_one_line(args: list[str], message: str, capsys) -> None:
    assert main(["-enable-kvm", "-kernel", "/etc/hostname", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("args, message", [
    (["-chardev", "null,id=c0", "-device", "virtconsole,chardev=c0"],
     "-device virtconsole,chardev=c0: No 'virtio-serial-bus' bus found for device 'virtconsole'"),
    (["-chardev", "null,id=c0"], "chardev 'c0' is not connected to anything"),
    (["-object", "memory-backend-memfd,id=m0,size=1M"], "has no object type 'memory-backend-memfd' yet"),
])
def test_the_board_refuses_what_it_does_not_build_yet_by_name(args: list[str], message: str, capsys) -> None:
    assert main(["-enable-kvm", "-kernel", "/etc/hostname", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_the_board_refuses_the_known_netdevs_and_drivers_it_does_not_build_by_name(capsys) -> None:
    pc = BOARDS["pc"]
    for netdev in sorted(set(cd.NETDEV_TYPES) - pc.netdev_types):
        assert main(["-enable-kvm", "-kernel", "/etc/hostname", "-netdev", f"{netdev},id=n0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"netdev type '{netdev}' yet" in err, err
    for driver in sorted(set(cd.DEVICE_DRIVERS) - pc.device_drivers - {"isa-debug-exit"}):
        if cd.DEVICE_DRIVERS[driver].refs or cd.DEVICE_DRIVERS[driver].bus != "PCI":
            continue  # needs a backend or a parent bus first: refused for that before the board is asked
        assert main(["-enable-kvm", "-kernel", "/etc/hostname", "-device", driver]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"unsupported device '{driver}': machine 'pc' does not build it yet" in err, err


def test_the_riscv_board_refuses_device_options_too(capsys) -> None:
    assert main(["-M", "virt", "-kernel", "/etc/hostname", "-netdev", "dgram,id=n0"]) == 2
    assert "machine 'virt' has no netdev type 'dgram' yet" in capsys.readouterr().err
    assert main(["-M", "virt", "-kernel", "/etc/hostname", "-device", "virtio-net-pci"]) == 2
    assert "unsupported device 'virtio-net-pci': machine 'virt' does not build it yet" in capsys.readouterr().err
    assert main(["-M", "virt", "-kernel", "/etc/hostname", "-chardev", "null,id=c", "-serial", "chardev:c"]) == 2
    assert "machine 'virt' has no chardev backend 'null' yet" in capsys.readouterr().err


def test_serial_on_a_chardev_is_a_valid_pc_config() -> None:
    c = _cfg("-chardev", "socket,id=c0,path=/tmp/kvmpy-s,server=on,wait=off", "-serial", "chardev:c0").validate()
    assert c.serial == "chardev:c0" and c.chardevs[0].path == "/tmp/kvmpy-s"


@pytest.mark.parametrize("option", ["-device", "-netdev", "-chardev", "-object"])
def test_help_lists_what_kvmpy_knows_and_exits_0(option: str, capsys) -> None:
    assert main(["-enable-kvm", option, "help"]) == 0
    out = capsys.readouterr().out
    known = {"-device": cd.DEVICE_DRIVERS, "-netdev": cd.NETDEV_TYPES, "-chardev": cd.CHARDEV_BACKENDS,
             "-object": cd.OBJECT_TYPES}[option]
    assert all(name in out for name in known)
    with pytest.raises(HelpRequested):
        parse_qemu_args(["-enable-kvm", option, "?"])
    assert main(["-enable-kvm", "-device", "virtio-net,help"]) == 0
    assert "netdev=" in capsys.readouterr().out


@needs_qemu
@pytest.mark.parametrize("option", ["-device", "-netdev", "-chardev", "-object"])
def test_every_name_kvmpy_lists_is_one_qemu_lists(option: str, capsys) -> None:
    main(["-enable-kvm", option, "help"])
    ours = [line for line in capsys.readouterr().out.splitlines() if line and not line.endswith(":")]
    theirs = subprocess.run([QEMU, "-M", "pc", option, "help"], capture_output=True, text=True, timeout=60).stdout
    theirs_lines = {line.strip() for line in theirs.splitlines()}
    for line in ours:
        assert line.strip() in theirs_lines, (line, option)


_SYNTAX_CASES = [
    ["-chardev", "null,id=c0"], ["-chardev", "null,id=1c"], ["-chardev", "null,id="], ["-chardev", "null,id=a.b-c_d"],
    ["-chardev", "null"], ["-chardev", "bogus,id=c"], ["-chardev", "file,id=c"], ["-chardev", "null,id=c,id=d"],
    ["-chardev", "socket,id=c,path={tmp}/s,server=on,wait=off"], ["-chardev", "socket,id=c,path={tmp}/s,server,nowait"],
    ["-chardev", "socket,id=c,host=localhost"], ["-chardev", "socket,id=c,path={tmp}/s,,x,server=on,wait=off"],
    ["-chardev", "file,id=c,path={tmp}/f"], ["-chardev", "null,id=c", "-chardev", "null,id=c"],
    ["-netdev", "user,id=n0"], ["-netdev", "user"], ["-netdev", "bogus,id=n"], ["-netdev", "user,id=a,id=b"],
    ["-netdev", "type=user,id=a"], ["-netdev", "id=a"], ["-netdev", ",id=a"], ["-netdev", "user,id=a", "-netdev", "user,id=a"],
    ["-netdev", "user,id=a,id=b", "-device", "virtio-net-pci,netdev=b"],
    ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"], ["-device", "virtio-net-pci,netdev=n0"],
    ["-netdev", "user,id=n0", "-device", "virtio-net,netdev=n0", "-device", "virtio-net-pci,netdev=n0"],
    ["-device", "e1000x"], ["-device", "virtio-rng-pci,id="], ["-device", "virtio-rng-pci,id=x,id=y"],
    ["-device", "virtio-rng-pci,id=x", "-device", "virtio-rng,id=x"],
    ["-drive", "file={img},if=none,format=raw,id=d0", "-device", "virtio-blk-pci,drive=d0"],
    ["-drive", "file={img},if=virtio,format=raw", "-device", "virtio-blk-pci,drive=virtio0"],
    ["-drive", "file={img},if=none,format=raw,id=d0", "-device", "virtio-blk-pci,drive=d0",
     "-device", "virtio-blk-pci,drive=d0"], ["-device", "virtio-blk-pci,drive=nod"],
    ["-drive", "file={img},if=none,format=raw,id=d0", "-drive", "file={img},if=none,format=raw,id=d0"],
    ["-drive", "file={img},if=bogus"], ["-drive", "file={img},format=raw,cache=bogus"],
    ["-drive", "file={img},format=raw,if=none,cache=directsync,aio=native"],
    ["-drive", "file={img},format=raw,if=none,aio=native"], ["-drive", "file={img},format=raw,if=none,readonly=maybe"],
    ["-drive", "file={img},format=raw,if=none,index=x"], ["-drive", "file={img},format=raw,if=none,read-only=on"],
    ["-drive", "file={img},format=raw,if=virtio,snapshot=on"],
    ["-blockdev", "driver=raw,node-name=a,file.driver=file,file.filename={img}"],
    ["-blockdev", "driver=raw,file.driver=file,file.filename={img}"],
    ["-blockdev", "driver=raw,node-name=1a,file.driver=file,file.filename={img}"],
    ["-blockdev", "driver=raw,node-name=a,file.driver=file,file.filename={img},file=x"],
    ["-blockdev", "driver=raw,node-name=a,file.driver=file,file.filename={img},bogus"],
    ["-blockdev", '{{"driver":"raw","node-name":"a","file":{{"driver":"file","filename":"{img}"}}}}'],
    ["-blockdev", '{{"driver":"raw","node-name":"a","file":{{"driver":"file","filename":"{img}"}},}}'],
    ["-blockdev", "driver=raw,node-name=a,file.driver=file,file.filename={img}",
     "-blockdev", "driver=raw,node-name=a,file.driver=file,file.filename={img}"],
    ["-drive", "file={img},format=raw,if=none,id=a", "-blockdev", "driver=raw,node-name=a,file.driver=file,"
                                                                  "file.filename={img}"],
    ["-blockdev", "driver=raw,node-name=b0,file.driver=file,file.filename={img}", "-device", "virtio-blk-pci,drive=b0"],
    ["-object", "bogus,id=o"], ["-object", "rng-random,id=r0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=r0"],
    ["-device", "virtio-rng-pci,rng=r9"],
    # QEMU 7.2's JSON forms
    ["-device", '{{"driver":"virtio-rng-pci","id":"r"}}'], ["-netdev", '{{"type":"user","id":"n"}}'],
    ["-object", '{{"qom-type":"rng-random","id":"r","filename":"/dev/urandom"}}'],
    ["-netdev", '{{"type":"user","id":"n"}}', "-device", '{{"driver":"virtio-net-pci","netdev":"n9"}}'],
    ["-device", '{{"driver":"e1000x"}}'], ["-device", '{{"driver":"virtio-rng-pci",}}'],
    ["-nic", "user,model=virtio-net-pci,mac=52:54:00:00:00:09"], ["-nic", "user,model=virtio", "-nic", "none"],
    ["-nic", "bogus,model=virtio"],
]


@needs_qemu
@pytest.mark.parametrize("case", _SYNTAX_CASES, ids=lambda c: " ".join(c)[:80])
def test_accepts_and_refuses_what_qemu_does(case: list[str], tmp_path: Path) -> None:
    img = tmp_path / "img.raw"
    img.write_bytes(b"\0" * 65536)
    args = [a.format(tmp=tmp_path, img=img) for a in case]
    qemu_ok, qemu_err = _qemu_accepts(args)
    assert _front_end_accepts(args) == qemu_ok, qemu_err


@needs_qemu
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="aZ09-._ é,=", max_size=6))
def test_fuzzed_ids_are_accepted_exactly_when_qemu_accepts_them(ident: str) -> None:
    args = ["-chardev", "null,id=" + ident]
    assert _front_end_accepts(args) == _qemu_accepts(args, "none")[0]


def test_machine_file_lists(tmp_path: Path) -> None:
    (tmp_path / "disk.qcow2").write_bytes(b"")
    (tmp_path / "m.yaml").write_text("""
kernel: /etc/hostname
devices:
  - {type: isa-debug-exit, iobase: 0xf4, iosize: 4}
  - {driver: virtio-net-pci, netdev: n0, id: nic0}
  - "virtio-blk-pci,drive=d1"
drives:
  - {file: disk.qcow2, if: virtio, format: qcow2, cache: none}
  - {file: disk.qcow2, if: none, id: d1, readonly: true}
blockdevs:
  - {driver: qcow2, node-name: b0, file: {driver: file, filename: disk.qcow2}}
netdevs:
  - {type: user, id: n0}
chardevs:
  - {backend: socket, id: c0, path: /tmp/s, server: true, wait: false}
  - "null,id=c1"
objects:
  - {qom-type: memory-backend-ram, id: m0, size: 1G}
""")
    with pytest.raises(ConfigError, match="chardev 'c0' is not connected to anything"):
        load_yaml(tmp_path / "m.yaml")  # the pc board does not build all of them yet
    from kvmpy.config import from_mapping, parse_yaml
    c = from_mapping(parse_yaml((tmp_path / "m.yaml").read_text()), tmp_path)
    assert (c.debug_exit.iobase, c.debug_exit.iosize) == (0xF4, 4)
    assert [(d.driver, d.id, d.get("drive")) for d in c.devices] == [
        ("virtio-net-pci", "nic0", None), ("virtio-blk-pci", None, "d1"), ("virtio-blk-pci", None, "virtio0")]
    assert c.drives[0].file == tmp_path / "disk.qcow2" and c.drives[1].readonly
    assert c.blockdevs[0].get("file.filename") == str(tmp_path / "disk.qcow2")
    assert c.chardevs == (ChardevSpec("socket", "c0", path="/tmp/s", server=True, wait=False), ChardevSpec("null", "c1"))
    assert c.objects[0].get_size("size") == 1 << 30
    check_devices(c.devices, c.drives, c.blockdevs, c.netdevs, c.chardevs, c.objects)


@pytest.mark.parametrize("text, message", [
    ("netdevs: {type: user}\n", "'netdevs' must be a list"),
    ("netdevs: [[user]]\n", "netdevs\\[0\\] must be a mapping or a string"),
    ("netdevs: [{type: user, id: [1]}]\n", "netdevs\\[0\\].id must be text"),
    ("netdevs: [{type: user, id: 1a}]\n", "Parameter 'id' expects an identifier"),
    ("netdevs: [{type: user, id: n, 5: x}]\n", "invalid key 5"),
    ("chardevs: [{backend: file, id: c}]\n", "chardevs\\[0\\]: chardev: file: no filename given"),
    ("drives: [{file: x, if: scsi}]\n", "unsupported bus type 'scsi'"),
    ("devices: [\"help\"]\n", "help is only available on the command line"),
    ("devices: [{driver: virtio-net-pci, netdev: n9}]\n", "can't find value 'n9'"),
    ("blockdevs: [{driver: raw, file: {driver: file, filename: [x]}}]\n", "filename must be text"),
    ("objects: [" + "{qom-type: rng-builtin, id: r}, " * 300 + "]\n", "more than 256 entries"),
])
def test_machine_file_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.yaml").write_text("kernel: /etc/hostname\n" + text)
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(tmp_path / "m.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("changes, message", [
    ({"devices": [DeviceSpec(driver=5)]}, "DeviceSpec field 'driver' must be str"),
    ({"devices": [DriveSpec(file=Path("/etc/hostname"))]}, "'devices' must hold DeviceSpec"),
    ({"drives": [DriveSpec(file=Path("/etc/hostname"), cache="fast")]}, "invalid cache 'fast'"),
    ({"netdevs": [NetdevSpec("user", "n0", props={"a": 1})]}, "'props' must be a tuple of"),
    ({"chardevs": (ChardevSpec("socket", "c", port="1"),)}, "'port' must be int or None"),
    ({"devices": [DeviceSpec("isa-debug-exit")]}, "debug_exit=DebugExitConfig"),
    ({"memory_slots": 4}, "slots specified but no max-size"),
])
def test_python_callers_get_one_line_too(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MachineConfig(kernel=Path("/etc/hostname"), **changes).validate()


def test_boards_name_only_known_device_options() -> None:
    for board in BOARDS.values():
        assert board.device_drivers <= set(cd.DEVICE_DRIVERS)
        assert board.netdev_types <= set(cd.NETDEV_TYPES) and board.chardev_backends <= set(cd.CHARDEV_BACKENDS)
        assert board.object_types <= set(cd.OBJECT_TYPES) and board.drive_interfaces <= set(cd.DRIVE_INTERFACES)
