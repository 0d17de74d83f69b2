"""The device part of a machine description: -device, -drive/-hda, -blockdev, -netdev, -chardev and -object specs.

Each option becomes one frozen spec (``DeviceSpec``, ``DriveSpec``, ``BlockdevSpec``,
``NetdevSpec``, ``ChardevSpec``, ``ObjectSpec``); ``MachineConfig`` holds tuples of them.
This module owns what QEMU checks before any device exists:

- the names kvmpy knows (``DEVICE_DRIVERS``, ``NETDEV_TYPES``, ``CHARDEV_BACKENDS``,
  ``OBJECT_TYPES``, ``BLOCK_DRIVERS``): plain data, so that validating a config never
  imports a board or a device. Which of them a *board* can build is the board's own
  data (``config.Board``), and the board's factories are tested against it;
- each spec's own options (``-drive cache=``, ``-chardev socket`` needs ``path`` or
  ``host``/``port``, ...), with QEMU's messages;
- ids: well formed (``qemu_opts.check_id``) and unique per kind; drive ids and
  blockdev node names share one namespace, as in QEMU;
- references: ``netdev=``, ``drive=``, ``chardev=``, ``memdev=``/``rng=`` of a device
  name an existing backend, each used by at most one device
  ("Property 'virtio-net-device.netdev' can't find value 'n0'");
- QEMU's implicit devices: ``-drive if=virtio`` is the drive plus a ``virtio-blk-pci``
  with ``drive=<id>`` (``DeviceSpec.implicit``), placed after the explicit ``-device``
  list as QEMU creates them; drive ids and indexes are numbered as QEMU numbers them
  (``virtio0``, ``ide0-hd0``, ``ide1-cd0``).

Builders take a parsed ``qemu_opts.Opts`` (command line) or a YAML mapping; both end
in the same spec. Device helpers read a spec's properties with ``get``/``get_bool``/
``get_number``/``get_size``, which raise one-line ConfigErrors naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from kvmpy import qemu_opts
from kvmpy.errors import ConfigError, shown
from kvmpy.qemu_opts import Opts

__all__ = ["BLOCK_DRIVERS", "CACHE_MODES", "CHARDEV_BACKENDS", "DEVICE_DRIVERS", "DRIVE_INTERFACES", "DeviceDriver",
           "BlockdevSpec", "ChardevSpec", "DeviceSpec", "DriveSpec", "NetdevSpec", "ObjectSpec", "NETDEV_TYPES",
           "OBJECT_TYPES", "IMPLIED_KEYS", "blockdev_from_tree", "chardev_from_opts", "check_devices",
           "device_from_opts", "drive_from_opts", "finish_devices", "finish_drives", "help_text",
           "legacy_drive", "netdev_from_opts", "nic_from_opts", "object_from_opts", "spec_from_text", "check_spec_types",
           "opts_from_yaml", "yaml_specs"]


@dataclass(frozen=True)
class DeviceDriver:
    """What the front end knows of one -device driver: its bus, and which properties name other objects."""

    name: str
    bus: str  # as QEMU's -device help prints it: PCI, ISA, virtio-serial-bus, "" (none)
    desc: str = ""
    aliases: tuple[str, ...] = ()
    refs: tuple[tuple[str, str], ...] = ()  # (property, kind): kind is drive, netdev, chardev or object
    owner: str = ""  # the QOM type QEMU names in property messages (virtio-net-device for virtio-net-pci)
    category: str = "Misc devices"

    @property
    def prop_owner(self) -> str:
        return self.owner or self.name


def _drivers(*items: DeviceDriver) -> Mapping[str, DeviceDriver]:
    return MappingProxyType({d.name: d for d in items})


# The -device drivers kvmpy knows (facts from qemu-system-x86_64 -device help, 7.2).
DEVICE_DRIVERS: Mapping[str, DeviceDriver] = _drivers(
    DeviceDriver("isa-debug-exit", "ISA"),
    DeviceDriver("virtio-blk-pci", "PCI", aliases=("virtio-blk",), refs=(("drive", "drive"),),
                 owner="virtio-blk-device", category="Storage devices"),
    DeviceDriver("virtio-net-pci", "PCI", aliases=("virtio-net",), refs=(("netdev", "netdev"),),
                 owner="virtio-net-device", category="Network devices"),
    DeviceDriver("virtio-rng-pci", "PCI", aliases=("virtio-rng",), refs=(("rng", "object"),),
                 owner="virtio-rng-device"),
    DeviceDriver("virtio-blk-device", "virtio-bus", refs=(("drive", "drive"),), category="Storage devices"),
    DeviceDriver("virtio-net-device", "virtio-bus", refs=(("netdev", "netdev"),), category="Network devices"),
    DeviceDriver("virtio-rng-device", "virtio-bus", refs=(("rng", "object"),)),
    DeviceDriver("virtio-serial-pci", "PCI", aliases=("virtio-serial",), owner="virtio-serial-device",
                 category="Input devices"),
    DeviceDriver("virtconsole", "virtio-serial-bus", refs=(("chardev", "chardev"),),
                 category="Input devices"),
    DeviceDriver("virtserialport", "virtio-serial-bus", refs=(("chardev", "chardev"),),
                 category="Input devices"),
    DeviceDriver("ide-hd", "IDE", desc="virtual IDE disk", refs=(("drive", "drive"),),
                 category="Storage devices"),
    DeviceDriver("ide-cd", "IDE", desc="virtual IDE CD-ROM", refs=(("drive", "drive"),),
                 category="Storage devices"),
    DeviceDriver("pc-dimm", "", desc="DIMM memory module", refs=(("memdev", "object"),),
                 category="Uncategorized devices"),
    DeviceDriver("VGA", "PCI", category="Display devices"),
    DeviceDriver("bochs-display", "PCI", category="Display devices"),
)
_ALIASES: Mapping[str, str] = MappingProxyType({a: d.name for d in DEVICE_DRIVERS.values() for a in d.aliases})

NETDEV_TYPES = ("user", "tap", "stream", "socket", "dgram")  # QEMU 7.2's names; a board builds a subset
CHARDEV_BACKENDS = ("null", "socket", "stdio", "file", "pty")
OBJECT_TYPES = ("memory-backend-ram", "memory-backend-file", "memory-backend-memfd", "rng-random", "rng-builtin")
BLOCK_DRIVERS = ("raw", "qcow2", "file")  # formats (raw, qcow2) and the protocol under them (file)
DRIVE_FORMATS = ("raw", "qcow2")
DRIVE_INTERFACES = ("ide", "virtio", "none")
DRIVE_MEDIA = ("disk", "cdrom")
# cache= mode -> (cache.direct, cache.no-flush, guest-visible write cache); QEMU's bdrv_parse_cache_mode.
CACHE_MODES: Mapping[str, tuple[bool, bool, bool]] = MappingProxyType({
    "writeback": (False, False, True), "none": (True, False, True), "writethrough": (False, False, False),
    "directsync": (True, False, False), "unsafe": (False, True, True)})
# aio= is checked as QEMU checks it (aio=native needs cache.direct=on) and kept in DriveSpec.props;
# it names QEMU's I/O engine, so kvmpy's block layer, which runs its own I/O threads, may ignore it.
AIO_MODES = ("threads", "native", "io_uring")
# Options of -drive besides the named fields; kept in DriveSpec.props for the block layer and devices.
DRIVE_OPTIONS = frozenset({"aio", "discard", "detect-zeroes", "werror", "rerror", "bus", "unit", "addr", "serial",
                           "copy-on-read", "cache.direct", "cache.no-flush", "auto-read-only", "force-share"})
IDE_UNITS = 2  # drives per IDE bus (master, slave); -hda..-hdd are indexes 0..3
MAX_NODE_NAME = 31  # QEMU's node names live in a 32-byte buffer
# The implied first key of each option, as QEMU names it.
IMPLIED_KEYS: Mapping[str, str | None] = MappingProxyType({
    "-device": "driver", "-netdev": "type", "-nic": "type", "-chardev": "backend", "-object": "qom-type", "-drive": None,
    "-blockdev": "driver"})
JSON_OPTIONS = ("-device", "-netdev", "-object")  # the options QEMU 7.2 also takes as a JSON object
_CHARDEV_KEYS: Mapping[str, frozenset[str]] = MappingProxyType({
    "null": frozenset(), "stdio": frozenset({"signal"}), "pty": frozenset({"path"}),
    "file": frozenset({"path", "append"}), "socket": frozenset({"path", "host", "port", "server", "wait"})})


class _Props:
    """Typed reads of ``props`` (pairs, last wins), each failing with one line that names the option."""

    props: tuple[tuple[str, Any], ...]
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "props", _pairs(self.props))  # the frozen spec holds a tuple of pairs

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in reversed(self.props):
            if k == key:
                return v
        return default

    def _where(self) -> tuple[str, str]:
        option, _, text = self.source.partition(" ")
        return option, text

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        return default if value is None else qemu_opts.parse_bool(value, key, *self._where())

    def get_number(self, key: str, default: int | None = None, lo: int = 0, hi: int = (1 << 64) - 1) -> int | None:
        value = self.get(key)
        return default if value is None else qemu_opts.parse_number(value, key, *self._where(), lo=lo, hi=hi)

    def get_size(self, key: str, default: int | None = None) -> int | None:
        value = self.get(key)
        return default if value is None else qemu_opts.parse_size(value, key, *self._where())


def _pairs(props: Any) -> Any:
    """Callers may give props as a dict or a list; the frozen spec holds a tuple of pairs."""
    if isinstance(props, Mapping):
        return tuple(props.items())
    if isinstance(props, list):
        return tuple(tuple(p) if isinstance(p, list) else p for p in props)
    return props


@dataclass(frozen=True)
class DeviceSpec(_Props):
    """One ``-device DRIVER,key=value,...``; ``driver`` is the canonical name (aliases resolved)."""

    driver: str
    id: str | None = None
    props: tuple[tuple[str, str], ...] = ()  # in order given, without driver and id
    implicit: bool = False  # made by -drive if=virtio, as QEMU makes it
    source: str = field(default="", compare=False)  # "-device TEXT" or "devices[2]": where, for messages


@dataclass(frozen=True)
class DriveSpec(_Props):
    """One ``-drive`` (or -hda..-hdd, -cdrom, a positional image): an image and how the guest sees it."""

    id: str | None = None  # None until numbered (finish_drives): then QEMU's name, e.g. virtio0, ide0-hd0
    file: Path | None = None  # None: an empty CD-ROM drive
    format: str | None = None  # raw or qcow2; None: probed from the image
    interface: str = "ide"  # if=: ide (QEMU's pc default), virtio or none
    media: str = "disk"  # disk or cdrom
    cache: str = "writeback"  # CACHE_MODES
    readonly: bool = False
    index: int | None = None  # None until numbered
    snapshot: bool = False  # writes go to a temporary overlay, as QEMU's snapshot=on
    props: tuple[tuple[str, str], ...] = ()  # the other DRIVE_OPTIONS given, and dotted block options (file.*)
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.file, str):
            object.__setattr__(self, "file", Path(self.file))

    @property
    def cache_direct(self) -> bool:
        """O_DIRECT on the image (cache=none/directsync, or cache.direct=on)."""
        return self.get_bool("cache.direct", CACHE_MODES.get(self.cache, (False, False, True))[0])

    @property
    def cache_no_flush(self) -> bool:
        """Guest flushes are ignored (cache=unsafe, or cache.no-flush=on)."""
        return self.get_bool("cache.no-flush", CACHE_MODES.get(self.cache, (False, False, True))[1])

    @property
    def write_cache(self) -> bool:
        """The device offers a volatile write cache (VIRTIO_BLK_F_FLUSH); off for writethrough/directsync."""
        return CACHE_MODES.get(self.cache, (False, False, True))[2]


@dataclass(frozen=True)
class BlockdevSpec(_Props):
    """One ``-blockdev``: a node graph given as flattened dotted keys (``file.driver``, ``file.filename``)."""

    driver: str
    node_name: str
    props: tuple[tuple[str, Any], ...] = ()  # dotted keys; values text (keyval) or JSON scalars
    source: str = field(default="", compare=False)

    def tree(self) -> dict[str, Any]:
        """The options as QEMU's nested dict (a fresh copy), driver and node-name included."""
        return {"driver": self.driver, "node-name": self.node_name, **qemu_opts.unflatten(self.props)}

    @property
    def readonly(self) -> bool:
        return self.get_bool("read-only", False)


@dataclass(frozen=True)
class NetdevSpec(_Props):
    """One ``-netdev TYPE,id=ID,...`` (user, tap, stream, ...); the backend helper reads ``props``."""

    type: str
    id: str
    props: tuple[tuple[str, str], ...] = ()
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class ChardevSpec(_Props):
    """One ``-chardev BACKEND,id=ID,...``: socket (unix ``path`` or tcp ``host``/``port``), stdio, file, pty, null."""

    backend: str
    id: str
    path: str | None = None  # socket: unix path; file: the file; pty: a symlink to the pty
    host: str | None = None  # socket: tcp host ("" for any)
    port: int | None = None  # socket: tcp port
    server: bool = False  # socket: listen instead of connect
    wait: bool = True  # socket server: wait for a client before the guest starts
    props: tuple[tuple[str, str], ...] = ()  # the other options (append, signal)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class ObjectSpec(_Props):
    """One ``-object QOM-TYPE,id=ID,...`` (memory backends, rng backends)."""

    qom_type: str
    id: str
    props: tuple[tuple[str, str], ...] = ()
    source: str = field(default="", compare=False)


# ---- builders: parsed options -> specs ----

def _source(opts: Opts) -> str:
    return qemu_opts.where(opts.option, opts.text)


def device_from_opts(opts: Opts) -> DeviceSpec:
    driver = opts.get("driver")
    if driver is None:
        raise opts.fail("Parameter 'driver' is missing")
    name = _ALIASES.get(driver, driver)
    if name not in DEVICE_DRIVERS:
        raise opts.fail(f"unsupported device {shown(driver, 40)}: not a valid device model name "
                        "(kvmpy -device help lists them)")
    props = tuple((k, v) for k, v in opts.pairs if k != "driver")
    return DeviceSpec(driver=name, id=opts.id, props=props, source=_source(opts))


def _choice(opts: Opts, key: str, allowed: tuple[str, ...] | Mapping, default: str, message: str) -> str:
    value = opts.get(key, default)
    if value not in allowed:
        raise opts.fail(message.format(value=value))
    return value


def drive_from_opts(opts: Opts, base_dir: Path | None = None) -> DriveSpec:
    """-drive file=,format=,if=,media=,cache=,readonly=,index=,snapshot=,... (QEMU's drive_new checks)."""
    known = {"file", "format", "if", "media", "cache", "readonly", "read-only", "index", "snapshot"} | DRIVE_OPTIONS
    for key in opts.keys():
        if key not in known and not key.startswith("file."):
            raise opts.fail(f"Invalid parameter {shown(key, 40)} (kvmpy -drive takes: {', '.join(sorted(known))})")
    fmt = opts.get("format")
    if fmt is not None and fmt not in DRIVE_FORMATS:
        raise opts.fail(f"Unknown driver {shown(fmt, 40)} (kvmpy opens {' and '.join(DRIVE_FORMATS)} images)")
    interface = _choice(opts, "if", DRIVE_INTERFACES, "ide", "unsupported bus type '{value}'")
    media = _choice(opts, "media", DRIVE_MEDIA, "disk", "'{value}' invalid media")
    cache = _choice(opts, "cache", CACHE_MODES, "writeback", "invalid cache option")
    aio = opts.get("aio")
    if aio is not None and aio not in AIO_MODES:
        raise opts.fail("invalid aio option")
    readonly = qemu_opts.parse_bool(opts.get("readonly", opts.get("read-only", "off")), "read-only",
                                    opts.option, opts.text)
    snapshot = qemu_opts.parse_bool(opts.get("snapshot", "off"), "snapshot", opts.option, opts.text)
    index = opts.get("index")
    number = None if index is None else qemu_opts.parse_number(index, "index", opts.option, opts.text, hi=1 << 16)
    direct = CACHE_MODES[cache][0]
    if opts.get("cache.direct") is not None:
        direct = qemu_opts.parse_bool(opts.get("cache.direct"), "cache.direct", opts.option, opts.text)
    if aio == "native" and not direct:
        raise opts.fail("aio=native was specified, but it requires cache.direct=on, which was not specified.")
    file_text = opts.get("file")
    if file_text is not None and file_text == "":
        file_text = None  # QEMU: file= is an empty drive (a CD-ROM without a disc)
    path = None
    if file_text is not None:
        path = Path(file_text)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
    elif media != "cdrom" and opts.get("file.filename") is None:
        raise opts.fail("Must specify either driver or file")
    if media == "cdrom":
        readonly = True  # QEMU opens a CD-ROM read-only
    props = tuple((k, v) for k, v in opts.pairs if k in DRIVE_OPTIONS or k.startswith("file."))
    return DriveSpec(id=opts.id, file=path, format=fmt, interface=interface, media=media, cache=cache,
                     readonly=readonly, index=number, snapshot=snapshot, props=props, source=_source(opts))


def legacy_drive(option: str, file: str, index: int | None, media: str = "disk") -> DriveSpec:
    """-hda/-hdb/-hdc/-hdd FILE, -cdrom FILE, a positional image: ``-drive file=FILE,index=N,media=M``."""
    if len(file) > qemu_opts.MAX_OPTION_TEXT or "\0" in file:
        raise ConfigError(f"{option}: invalid file name {shown(file)}")
    return DriveSpec(file=Path(file) if file else None, index=index, media=media, interface="ide",
                     readonly=media == "cdrom", source=qemu_opts.where(option, file).strip())


def _check_node_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not qemu_opts.id_wellformed(name):
        raise ConfigError(f"{source}: Invalid node-name: {shown(name, 40)}")
    if len(name) > MAX_NODE_NAME:
        raise ConfigError(f"{source}: Node name too long")
    return name


def blockdev_from_tree(tree: dict[str, Any], source: str) -> BlockdevSpec:
    """-blockdev's parsed tree (keyval or JSON): the root needs driver and node-name; nested nodes are checked too."""
    def check(node: dict[str, Any], root: bool) -> None:
        driver = node.get("driver")
        if driver is None:
            raise ConfigError(f"{source}: Parameter 'driver' is missing")
        if driver not in BLOCK_DRIVERS:
            raise ConfigError(f"{source}: Parameter 'driver' does not accept value {shown(driver, 40)}")
        if "node-name" in node or root:
            if root and "node-name" not in node:
                raise ConfigError(f"{source}: 'node-name' must be specified for the root node")
            _check_node_name(node["node-name"], source)
        for value in node.values():
            if isinstance(value, dict) and "driver" in value:
                check(value, False)

    check(tree, True)
    props = tuple((k, v) for k, v in qemu_opts.flatten(tree) if k not in ("driver", "node-name"))
    return BlockdevSpec(driver=tree["driver"], node_name=tree["node-name"], props=props, source=source)


def _kind_and_id(opts: Opts, key: str, known: tuple[str, ...]) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """The type (``key``), id and other pairs of a -netdev/-object, with QEMU's messages for each one missing."""
    kind = opts.get(key)
    if kind is None:
        raise opts.fail(f"Parameter '{key}' is missing")
    if kind not in known:
        raise opts.fail(f"Parameter '{key}' does not accept value {shown(kind, 40)} (kvmpy knows {', '.join(known)})")
    if opts.id is None:
        raise opts.fail("Parameter 'id' is missing")
    return kind, opts.id, tuple((k, v) for k, v in opts.pairs if k != key)


def netdev_from_opts(opts: Opts) -> NetdevSpec:
    kind, ident, props = _kind_and_id(opts, "type", NETDEV_TYPES)
    return NetdevSpec(type=kind, id=ident, props=props, source=_source(opts))


def chardev_from_opts(opts: Opts) -> ChardevSpec:
    backend = opts.get("backend")
    if backend is None:
        raise opts.fail("Parameter 'backend' is missing")
    if backend not in CHARDEV_BACKENDS:
        raise opts.fail(f"{shown(backend, 40)} is not a valid char driver name "
                        f"(kvmpy has {', '.join(CHARDEV_BACKENDS)})")
    if opts.id is None:
        raise opts.fail("chardev: no id specified")
    allowed = _CHARDEV_KEYS[backend]
    for key in opts.keys():
        if key != "backend" and key not in allowed:
            takes = f"takes: {', '.join(sorted(allowed))}" if allowed else "takes no options"
            raise opts.fail(f"Invalid parameter {shown(key, 40)} (kvmpy's {backend} chardev {takes})")
    path, host, port_text = opts.get("path"), opts.get("host"), opts.get("port")
    port = None
    server = qemu_opts.parse_bool(opts.get("server", "off"), "server", opts.option, opts.text)
    wait = qemu_opts.parse_bool(opts.get("wait", "on"), "wait", opts.option, opts.text)
    if backend == "file" and not path:
        raise opts.fail("chardev: file: no filename given")
    if backend == "socket":
        if path is not None and (host is not None or port_text is not None):
            raise opts.fail("chardev: socket: give either path= (unix) or host=/port= (tcp), not both")
        if path is None:
            if port_text is None:
                raise opts.fail("chardev: socket: no port given" if host is not None else
                                "chardev: socket: give path= (unix) or host= and port= (tcp)")
            port = qemu_opts.parse_number(port_text, "port", opts.option, opts.text, hi=65535)
            host = host or ""
        elif path == "":
            raise opts.fail("chardev: socket: empty path")
    props = tuple((k, v) for k, v in opts.pairs if k not in ("backend", "path", "host", "port", "server", "wait"))
    return ChardevSpec(backend=backend, id=opts.id, path=path, host=host, port=port, server=server, wait=wait,
                       props=props, source=_source(opts))


def object_from_opts(opts: Opts) -> ObjectSpec:
    kind, ident, props = _kind_and_id(opts, "qom-type", OBJECT_TYPES)
    return ObjectSpec(qom_type=kind, id=ident, props=props, source=_source(opts))


NIC_MODELS: Mapping[str, str] = MappingProxyType({"virtio": "virtio-net-pci", "virtio-net-pci": "virtio-net-pci",
                                                  "virtio-net": "virtio-net-pci"})


def nic_from_opts(opts: Opts, index: int) -> tuple[NetdevSpec, DeviceSpec] | None:
    """``-nic TYPE[,model=M][,mac=A][,netdev options]``: a netdev and its NIC, as QEMU's net_param_nic (None: -nic none)."""
    if opts.get("type") == "none":
        return None
    model = opts.get("model", "e1000")
    if model not in NIC_MODELS:
        hint = " (QEMU's default; kvmpy has model=virtio-net-pci)" if "model" not in opts.keys() else \
            f" (kvmpy has {', '.join(NIC_MODELS)})"
        raise opts.fail(f"Unsupported NIC model: {shown(model, 40)}{hint}")
    netdev_id = f"__org.qemu.nic{index}"  # QEMU's name; a user's id cannot start with '_'
    pairs = tuple((k, v) for k, v in opts.pairs if k not in ("model", "mac"))
    kind, _, props = _kind_and_id(replace(opts, pairs=pairs, id=netdev_id), "type", NETDEV_TYPES)
    nic_props = (("netdev", netdev_id),) + ((("mac", opts.get("mac")),) if opts.get("mac") is not None else ())
    source = _source(opts)
    return (NetdevSpec(kind, netdev_id, props, source=source),
            DeviceSpec(NIC_MODELS[model], opts.id, nic_props, source=source))


def spec_from_text(option: str, text: str, base_dir: Path | None = None) -> Any:
    """The spec of one option argument (``-netdev user,id=n0``), help refused (front ends handle it first)."""
    if option == "-blockdev":
        return blockdev_from_tree(qemu_opts.parse_structured(text, option, "driver"), qemu_opts.where(option, text))
    opts = qemu_opts.parse_opts(text, option, IMPLIED_KEYS[option], json_form=option in JSON_OPTIONS)
    if opts.help:
        raise opts.fail("help is only available on the command line (kvmpy " + option + " help)")
    if option == "-drive":
        return drive_from_opts(opts, base_dir)
    build = {"-device": device_from_opts, "-netdev": netdev_from_opts, "-chardev": chardev_from_opts,
             "-object": object_from_opts}[option]
    return build(opts)


# ---- whole-config steps: numbering, implicit devices, cross-checks ----

def _auto_drive_id(interface: str, index: int, media: str) -> str:
    """QEMU's drive_new() name: ide0-hd0 / ide1-cd0 (bus, unit), virtio0, none0."""
    if interface == "ide":
        kind = "cd" if media == "cdrom" else "hd"
        return f"ide{index // IDE_UNITS}-{kind}{index % IDE_UNITS}"
    return f"{interface}{index}"


def finish_drives(drives: tuple[DriveSpec, ...]) -> tuple[DriveSpec, ...]:
    """Give each drive QEMU's index (first free per interface) and id; duplicates are left for check_devices."""
    if not all(isinstance(d, DriveSpec) for d in drives):
        return drives
    used: dict[str, set[int]] = {}
    for d in drives:
        if isinstance(d.index, int):
            used.setdefault(d.interface, set()).add(d.index)
    out = []
    for d in drives:
        index = d.index
        if index is None:
            taken = used.setdefault(d.interface, set())
            index = 0
            while index in taken:
                index += 1
            taken.add(index)
        ident = d.id
        if ident is None and isinstance(index, int) and isinstance(d.interface, str) and isinstance(d.media, str):
            ident = _auto_drive_id(d.interface, index, d.media)
        out.append(d if (index, ident) == (d.index, d.id) else replace(d, index=index, id=ident))
    return tuple(out)


def finish_devices(devices: tuple[DeviceSpec, ...], drives: tuple[DriveSpec, ...],
                   blk_driver: str = "virtio-blk-pci") -> tuple[DeviceSpec, ...]:
    """The explicit devices, then one implicit ``blk_driver`` (the board's virtio-blk) per if=virtio drive
    (QEMU's order)."""
    if not all(isinstance(d, DeviceSpec) for d in devices) or not all(isinstance(d, DriveSpec) for d in drives):
        return devices
    explicit = tuple(d for d in devices if not d.implicit)
    implicit = []
    for d in drives:
        if d.interface == "virtio" and d.id is not None:
            keep = ("addr", "serial") if blk_driver == "virtio-blk-pci" else ("serial",)
            props = (("drive", d.id),) + tuple((k, v) for k, v in d.props if k in keep)
            implicit.append(DeviceSpec(blk_driver, None, props, implicit=True, source=d.source))
    return explicit + tuple(implicit)


def _unique(ids: Iterable[tuple[str | None, str]], kind: str) -> set[str]:
    seen: set[str] = set()
    for ident, source in ids:
        if ident is None:
            continue
        if ident in seen:
            raise ConfigError(f"{source}: Duplicate ID {shown(ident, 40)} for {kind}")
        seen.add(ident)
    return seen


def check_devices(devices: tuple[DeviceSpec, ...], drives: tuple[DriveSpec, ...],
                  blockdevs: tuple[BlockdevSpec, ...], netdevs: tuple[NetdevSpec, ...],
                  chardevs: tuple[ChardevSpec, ...], objects: tuple[ObjectSpec, ...],
                  serial_chardev: str | None = None) -> None:
    """QEMU's checks across options: ids unique per kind, references resolve, each backend used once."""
    for d in devices:
        if d.driver not in DEVICE_DRIVERS:
            raise ConfigError(f"{d.source or '-device'}: {shown(d.driver, 40)} is not a valid device model name")
        if d.id is not None and not qemu_opts.id_wellformed(d.id):
            raise ConfigError(f"{d.source or '-device'}: Parameter 'id' expects an identifier")
    _unique(((d.id, d.source) for d in devices), "device")
    _unique(((n.id, n.source) for n in netdevs), "netdev")
    _unique(((c.id, c.source) for c in chardevs), "chardev")
    _unique(((o.id, o.source) for o in objects), "object")
    nodes = _unique(((b.node_name, b.source) for b in blockdevs), "node-name")
    seen_index: dict[tuple[str, int], str] = {}
    drive_ids: set[str] = set()
    for d in drives:
        if d.index is not None:
            key = (d.interface, d.index)
            if key in seen_index:
                if d.interface == "ide":
                    raise ConfigError(f"{d.source}: drive with bus={d.index // IDE_UNITS}, unit={d.index % IDE_UNITS} "
                                      f"(index={d.index}) exists")
                raise ConfigError(f"{d.source}: drive with if={d.interface}, index={d.index} exists")
            seen_index[key] = d.source
        if d.id in nodes:
            raise ConfigError(f"{d.source}: Device name {shown(d.id, 40)} conflicts with an existing node name")
        if d.id in drive_ids:
            raise ConfigError(f"{d.source}: Duplicate ID {shown(d.id, 40)} for drive")
        if d.id is not None:
            drive_ids.add(d.id)
    names = {"drive": drive_ids | nodes, "netdev": {n.id for n in netdevs}, "chardev": {c.id for c in chardevs},
             "object": {o.id for o in objects}}
    users: dict[tuple[str, str], DeviceSpec] = {}
    if serial_chardev is not None:
        if serial_chardev not in names["chardev"]:
            raise ConfigError(f"-serial chardev:{serial_chardev}: chardev {shown(serial_chardev, 40)} not found")
        users[("chardev", serial_chardev)] = DeviceSpec("isa-serial", source="-serial")
    # The implicit devices claim their drives first: QEMU creates them with the drive.
    for d in sorted(devices, key=lambda d: not d.implicit):
        info = DEVICE_DRIVERS[d.driver]
        for prop, kind in info.refs:
            value = d.get(prop)
            if value is None or (kind == "drive" and value == ""):
                continue  # QEMU: an empty drive= is no drive (an empty ide-cd; "drive property not set")
            where = d.source or "-device"
            if value not in names[kind]:
                if kind == "object" and prop == "memdev":
                    raise ConfigError(f"{where}: Device {shown(value, 40)} not found")
                raise ConfigError(f"{where}: Property '{info.prop_owner}.{prop}' can't find value {shown(value, 40)}")
            other = users.get((kind, value))
            if other is not None:
                if kind == "drive":
                    if other.implicit:
                        raise ConfigError(f"{other.source}: Drive {shown(value, 40)} is already in use because it has "
                                          "been automatically connected to another device (did you need 'if=none' "
                                          "in the drive options?)")
                    raise ConfigError(f"{where}: Drive {shown(value, 40)} is already in use by another device")
                if kind == "chardev":
                    raise ConfigError(f"{where}: Property '{info.prop_owner}.{prop}' can't take value "
                                      f"{shown(value, 40)}: Device {shown(value, 40)} is in use")
                raise ConfigError(f"{where}: Property '{info.prop_owner}.{prop}' can't take value {shown(value, 40)}, "
                                  "it's in use")
            users[(kind, value)] = d


# ---- help, as QEMU prints it for "-device help" and friends ----

_CATEGORIES = ("Controller/Bridge/Hub devices", "USB devices", "Storage devices", "Network devices", "Input devices",
               "Display devices", "Sound devices", "Misc devices", "CPU devices", "Watchdog devices",
               "Uncategorized devices")  # QEMU's order

def help_text(option: str, what: str | None = None) -> str:
    """What ``kvmpy OPTION help`` prints (QEMU's layout), or ``OPTION NAME,help`` for one device driver."""
    if option == "-device":
        if what is not None:
            info = DEVICE_DRIVERS[_ALIASES.get(what, what)]
            refs = "".join(f"  {p}=<str>  - the id of a -{k if k != 'object' else 'object'}\n"
                           for p, k in info.refs)
            return f"{info.name} options:\n  id=<str>\n{refs}"
        lines: dict[str, list[str]] = {}
        for d in DEVICE_DRIVERS.values():
            text = f'name "{d.name}"' + (f", bus {d.bus}" if d.bus else "")
            text += "".join(f', alias "{a}"' for a in d.aliases) + (f', desc "{d.desc}"' if d.desc else "")
            lines.setdefault(d.category, []).append(text)
        order = [c for c in _CATEGORIES if c in lines] + sorted(set(lines) - set(_CATEGORIES))
        return "".join(f"{cat}:\n" + "".join(f"{line}\n" for line in sorted(lines[cat])) + "\n" for cat in order)
    if option == "-netdev":
        return "Available netdev backend types:\n" + "".join(f"{n}\n" for n in NETDEV_TYPES)
    if option == "-chardev":
        return "Available chardev backend types: \n" + "".join(f"  {n}\n" for n in CHARDEV_BACKENDS)
    if option == "-object":
        return "List of user creatable objects:\n" + "".join(f"  {n}\n" for n in OBJECT_TYPES)
    raise ConfigError(f"{option} help: Help is not available for this option")


# ---- machine files: the same specs from YAML ----

MAX_YAML_ITEMS = 256  # entries in one list (devices:, drives:, ...)


def _yaml_text(value: Any, where: str) -> str:
    """A YAML scalar as QEMU option text: booleans on/off, integers in decimal."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        if value.bit_length() > 128:
            raise ConfigError(f"{where}: {shown(value)} is too large")
        return str(value)
    if isinstance(value, str):
        if len(value) > qemu_opts.MAX_OPTION_TEXT or "\0" in value:
            raise ConfigError(f"{where}: invalid value {shown(value)}")
        return value
    raise ConfigError(f"{where} must be text, a number or a boolean, not {type(value).__name__}")


def opts_from_yaml(item: Any, label: str, option: str) -> Opts:
    """One YAML list entry as ``Opts``: a mapping of option keys, or a string in QEMU's syntax.

    In a mapping, ``type`` names the implied first key too (``type: virtio-net-pci`` is the
    driver, ``type: socket`` a chardev's backend), as the machine file's ``devices:`` always had it.
    """
    implied = IMPLIED_KEYS[option]
    if isinstance(item, str):
        opts = qemu_opts.parse_opts(item, label, implied)
        if opts.help:
            raise opts.fail("help is only available on the command line")
        return opts
    if not isinstance(item, dict):
        raise ConfigError(f"{label} must be a mapping or a string in {option}'s syntax, not {type(item).__name__}")
    if len(item) > qemu_opts.MAX_KEYS:
        raise ConfigError(f"{label}: more than {qemu_opts.MAX_KEYS} keys")
    pairs: list[tuple[str, str]] = []
    ident = None
    for key, value in item.items():
        if not isinstance(key, str) or not 0 < len(key) <= qemu_opts.MAX_KEY:
            raise ConfigError(f"{label}: invalid key {shown(key, 40)}")
        if key == "type" and implied is not None:
            key = implied
        text = _yaml_text(value, f"{label}.{key}")
        if key == "id":
            ident = qemu_opts.check_id(text, label, "")
        else:
            pairs.append((key, text))
    return Opts(option=label, text="", pairs=tuple(pairs), id=ident)


def yaml_specs(data: Any, key: str, base_dir: Path) -> list[Any]:
    """The specs of one machine-file list (``netdevs:``, ``drives:``, ...), each entry checked like its option."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"'{key}' must be a list, not {type(data).__name__}")
    if len(data) > MAX_YAML_ITEMS:
        raise ConfigError(f"'{key}' has more than {MAX_YAML_ITEMS} entries")
    option = {"devices": "-device", "drives": "-drive", "netdevs": "-netdev", "chardevs": "-chardev",
              "objects": "-object", "blockdevs": "-blockdev"}[key]
    out = []
    for i, item in enumerate(data):
        label = f"{key}[{i}]"
        if option == "-blockdev":
            out.append(_yaml_blockdev(item, label, base_dir))
            continue
        opts = opts_from_yaml(item, label, option)
        if option == "-drive":
            out.append(drive_from_opts(opts, base_dir))
        else:
            build = {"-device": device_from_opts, "-netdev": netdev_from_opts, "-chardev": chardev_from_opts,
                     "-object": object_from_opts}[option]
            out.append(build(opts))
    return out


def _yaml_blockdev(item: Any, label: str, base_dir: Path) -> BlockdevSpec:
    if isinstance(item, str):
        return blockdev_from_tree(qemu_opts.parse_structured(item, label, "driver"), label)
    if not isinstance(item, dict):
        raise ConfigError(f"{label} must be a mapping or a string in -blockdev's syntax, not {type(item).__name__}")

    def convert(node: dict, where: str, depth: int) -> dict:
        if depth > qemu_opts.MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {qemu_opts.MAX_DEPTH} levels")
        out: dict[str, Any] = {}
        for k, v in node.items():
            if not isinstance(k, str) or not 0 < len(k) <= qemu_opts.MAX_KEY:
                raise ConfigError(f"{where}: invalid key {shown(k, 40)}")
            if isinstance(v, dict):
                out[k] = convert(v, f"{where}.{k}", depth + 1)
            elif k == "filename" and isinstance(v, str) and v and not Path(v).is_absolute() and "\0" not in v:
                out[k] = str(base_dir / v)  # image paths in a machine file are relative to it, like kernel:
            elif isinstance(v, (bool, int, str)):
                _yaml_text(v, f"{where}.{k}")  # bounded text and integers; the typed value is kept, as in JSON
                out[k] = v
            else:
                raise ConfigError(f"{where}.{k} must be text, a number, a boolean or a mapping")
        return out

    return blockdev_from_tree(convert(item, label, 0), label)


# ---- the types a Python caller must use (validate() refuses anything else by name) ----

_SPEC_TYPES: Mapping[type, Mapping[str, tuple[type, ...]]] = MappingProxyType({
    DeviceSpec: {"driver": (str,), "id": (str, type(None)), "implicit": (bool,)},
    DriveSpec: {"id": (str, type(None)), "file": (Path, type(None)), "format": (str, type(None)),
                "interface": (str,), "media": (str,), "cache": (str,), "readonly": (bool,),
                "index": (int, type(None)), "snapshot": (bool,)},
    BlockdevSpec: {"driver": (str,), "node_name": (str,)},
    NetdevSpec: {"type": (str,), "id": (str,)},
    ChardevSpec: {"backend": (str,), "id": (str,), "path": (str, type(None)), "host": (str, type(None)),
                  "port": (int, type(None)), "server": (bool,), "wait": (bool,)},
    ObjectSpec: {"qom_type": (str,), "id": (str,)},
})


def check_spec_types(spec: Any, what: str) -> None:
    """One spec built by a Python caller: every field of the right type, props pairs of text (JSON scalars for blockdev)."""
    for name, types in _SPEC_TYPES[type(spec)].items():
        value = getattr(spec, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"{what} field {name!r} must be {' or '.join(t.__name__ for t in types)}, "
                              f"not {type(value).__name__}")
    scalars = (str, int, bool, float, type(None)) if isinstance(spec, BlockdevSpec) else (str,)
    props = spec.props
    if not isinstance(props, tuple) or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                               and isinstance(p[1], scalars) for p in props):
        raise ConfigError(f"{what} field 'props' must be a tuple of (name, value) pairs")
    if isinstance(spec, DriveSpec):
        for name, allowed in (("interface", DRIVE_INTERFACES), ("media", DRIVE_MEDIA), ("cache", tuple(CACHE_MODES))):
            if getattr(spec, name) not in allowed:
                raise ConfigError(f"{spec.source or what}: invalid {name} {shown(getattr(spec, name), 40)} "
                                  f"({', '.join(allowed)})")
        if spec.format is not None and spec.format not in DRIVE_FORMATS:
            raise ConfigError(f"{spec.source or what}: Unknown driver {shown(spec.format, 40)}")
