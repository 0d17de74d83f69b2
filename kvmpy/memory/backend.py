"""Host memory backends: the ``memory-backend-ram`` and ``memory-backend-file`` objects behind a DIMM.

A backend is a named RAMBlock plus the properties QEMU gives it (size,
mem-path, share, prealloc). ``Backends`` holds the machine's objects by id:
created from ``-object`` at start or QMP ``object-add`` at run time, deleted by
``object-del`` unless a device uses one. Errors carry QEMU 7.2's wording, so
the monitor can pass them on unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from kvmpy.memory.ramblock import RAMAllocationError, RAMBlock

BACKEND_TYPES = ("memory-backend-ram", "memory-backend-file")
# Anonymous RAM is aligned as QEMU aligns its allocations (QEMU_VMALLOC_ALIGN on x86-64).
RAM_ALIGN = 2 << 20
MAX_BACKEND_SIZE = 1 << 46


class BackendError(ValueError):
    """A backend could not be created or removed; the message is QEMU's."""


@dataclass(eq=False)
class HostMemoryBackend:
    id: str
    qom_type: str
    size: int
    block: RAMBlock
    mem_path: str | None = None
    share: bool = False
    prealloc: bool = False
    used_by: str | None = None  # the id of the device mapping it (None: free)

    @property
    def path(self) -> str:
        """Its QOM path, as query-memory-devices shows it."""
        return f"/objects/{self.id}"

    @property
    def align(self) -> int:
        """The alignment a DIMM's address and size need with this backend."""
        return max(RAM_ALIGN, self.block.page_size)

    def close(self) -> None:
        try:
            self.block.mv.release()
            self.block.mm.close()
        except (BufferError, ValueError):
            pass  # still exported somewhere (a numpy view): the mapping goes when the last user does


def _bool(qom_type: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("on", "off", "yes", "no", "true", "false"):
        return value in ("on", "yes", "true")
    raise BackendError(f"Parameter '{key}' expects 'on' or 'off'")


def _size(qom_type: str, value: Any) -> int:
    from kvmpy.units import parse_size

    if isinstance(value, str):
        try:
            value = parse_size(value)
        except ValueError:
            raise BackendError("Parameter 'size' expects a non-negative number below 2^64") from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BackendError("Invalid parameter type for 'size', expected: integer")
    if value == 0:
        raise BackendError(f"property 'size' of {qom_type} doesn't take value '0'")
    if value > MAX_BACKEND_SIZE:
        raise BackendError(f"property 'size' of {qom_type} doesn't take value '{value}'")
    return value


def create_backend(qom_type: str, obj_id: str, props: Mapping[str, Any]) -> HostMemoryBackend:
    """Build one backend from its QOM type, id and properties (strings from -object, typed from QMP)."""
    if qom_type not in BACKEND_TYPES:
        raise BackendError(f"Parameter 'qom-type' does not accept value '{qom_type}'")
    known = {"size", "share", "prealloc"} | ({"mem-path"} if qom_type == "memory-backend-file" else set())
    for key in props:
        if key not in known:
            raise BackendError(f"Property '{qom_type}.{key}' not found")
    if "size" not in props:
        raise BackendError("Parameter 'size' is missing")
    size = _size(qom_type, props["size"])
    share = _bool(qom_type, "share", props.get("share", False))
    prealloc = _bool(qom_type, "prealloc", props.get("prealloc", False))
    name = f"/objects/{obj_id}"
    try:
        if qom_type == "memory-backend-file":
            path = props.get("mem-path")
            if path is None:
                raise BackendError("Parameter 'mem-path' is missing")
            if not isinstance(path, str) or not path or "\0" in path:
                raise BackendError("Invalid parameter type for 'mem-path', expected: string")
            block = RAMBlock.map_file(name, size, path, share=share, prealloc=prealloc)
            return HostMemoryBackend(obj_id, qom_type, size, block, path, share, prealloc)
        try:
            block = RAMBlock.allocate(name, (size + 4095) & ~4095, share=share)  # QEMU maps whole host pages
        except RAMAllocationError as exc:
            raise BackendError(f"cannot set up guest memory '{obj_id}': {exc.reason}") from None
        if prealloc:
            block.populate()
        return HostMemoryBackend(obj_id, qom_type, size, block, None, share, prealloc)
    except RAMAllocationError as exc:
        raise BackendError(str(exc)) from None


class Backends:
    """The machine's memory-backend objects, by id (thread-safe: the monitor and start-up both add)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, HostMemoryBackend] = {}

    def add(self, qom_type: str, obj_id: str, props: Mapping[str, Any]) -> HostMemoryBackend:
        with self._lock:
            if obj_id in self._by_id:
                raise BackendError(f"attempt to add duplicate property '{obj_id}' to object (type 'container')")
        backend = create_backend(qom_type, obj_id, props)
        with self._lock:
            if obj_id in self._by_id:
                backend.close()
                raise BackendError(f"attempt to add duplicate property '{obj_id}' to object (type 'container')")
            self._by_id[obj_id] = backend
        return backend

    def delete(self, obj_id: str) -> None:
        with self._lock:
            backend = self._by_id.get(obj_id)
            if backend is None:
                raise BackendError(f"object '{obj_id}' not found")
            if backend.used_by is not None:
                raise BackendError(f"object '{obj_id}' is in use, can not be deleted")
            del self._by_id[obj_id]
        backend.close()

    def get(self, obj_id: str) -> HostMemoryBackend | None:
        with self._lock:
            return self._by_id.get(obj_id)

    def __iter__(self) -> Iterator[HostMemoryBackend]:
        with self._lock:
            return iter(list(self._by_id.values()))

    def __contains__(self, obj_id: object) -> bool:
        with self._lock:
            return obj_id in self._by_id
