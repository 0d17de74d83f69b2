"""virtio-rng (virtio 1.2, 5.4): one queue whose writable buffers the device fills from the host's getrandom().

The device has no configuration space and no feature bits of its own. Each
request (one descriptor chain) gets at most ``max_request`` bytes, so a
driver that posts huge buffers cannot make one kick spend unbounded time in
the kernel's CSPRNG; what the chain's writable buffers can hold beyond that
stays unwritten and the used length says how much was given, as the spec
allows. Chains are completed synchronously on the transport's I/O thread, so
nothing is ever in flight when the VM's state is saved.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable

from kvmpy.devices.device import check_keys
from kvmpy.devices.virtio.device import DeviceType, VirtioContext, VirtioDevice
from kvmpy.devices.virtio.pci import PciBoard, VirtioPci, virtio_pci
from kvmpy.errors import ConfigError

if TYPE_CHECKING:
    from kvmpy.config_devices import DeviceSpec

log = logging.getLogger(__name__)

QUEUE_SIZE = 8  # QEMU's virtio-rng queue size
MAX_REQUEST = 64 * 1024
PCI_CLASS_OTHERS = 0x00FF  # what QEMU gives virtio-rng-pci


class VirtioRng(VirtioDevice):
    device_type = DeviceType.RNG
    pci_class = PCI_CLASS_OTHERS

    def __init__(self, max_request: int = MAX_REQUEST,
                 entropy: Callable[[int], bytes] = os.getrandom) -> None:
        if max_request <= 0:
            raise ValueError("virtio-rng: the per-request limit must be positive")
        self.name = "virtio-rng"
        self.max_request = max_request
        self.entropy = entropy
        self.ctx: VirtioContext | None = None
        self.bytes_given = 0  # for tests and statistics

    @property
    def queue_max_sizes(self) -> tuple[int, ...]:
        return (QUEUE_SIZE,)

    def device_features(self) -> int:
        return 0

    def config_read(self, offset: int, size: int) -> int:
        return 0

    def activate(self, ctx: VirtioContext) -> None:
        self.ctx = ctx

    def reset(self) -> None:
        self.ctx = None

    def queue_notify(self, index: int) -> None:
        ctx = self.ctx
        if ctx is None or index != 0:
            return
        queue = ctx.queues[0]
        done = 0
        # pop() ends the loop (the queue bounds how far the driver's avail index may run ahead) and, finding
        # the ring drained, asks for the next kick itself. VirtQueueError propagates: the transport marks
        # the device NEEDS_RESET.
        while (chain := queue.pop()) is not None:
            n = min(chain.writable_len, self.max_request)
            written = queue.write(chain, self.entropy(n)) if n else 0
            queue.push(chain, written)
            self.bytes_given += written
            done += 1
        if done:
            ctx.interrupt(0)

    def save(self) -> dict[str, Any]:
        return {}

    def validate(self, state: dict[str, Any]) -> Any:
        check_keys(state, set())
        return None


def virtio_rng_pci(board: PciBoard, spec: "DeviceSpec") -> VirtioPci:
    """``-device virtio-rng-pci[,rng=ID]``: entropy from the host's getrandom().

    ``rng=`` may name an rng-builtin/rng-random object (the front end checks it exists); either way
    the bytes come from getrandom(), the kernel CSPRNG behind /dev/urandom. QEMU's rate limit
    (max-bytes/period) is refused rather than ignored.
    """
    where = spec.source or "-device virtio-rng-pci"
    for key in ("max-bytes", "period"):
        if spec.get(key) is not None:
            raise ConfigError(f"{where}: virtio-rng-pci's {key}= (rate limiting) is not supported by kvmpy")
    return virtio_pci(board, spec, VirtioRng(), device_props=frozenset({"rng", "max-bytes", "period"}))
