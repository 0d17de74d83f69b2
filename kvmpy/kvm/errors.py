"""Errors raised by the raw KVM layer, each with a message a user can act on."""

from __future__ import annotations


class KvmError(RuntimeError):
    """Base class: something about /dev/kvm or an ioctl failed."""


class KvmUnavailableError(KvmError):
    """/dev/kvm is missing or cannot be opened."""


class KvmApiVersionError(KvmError):
    """The kernel speaks a KVM API version we do not."""


class KvmCapabilityError(KvmError):
    """A capability kvmpy needs is missing."""


class KvmIoctlError(KvmError):
    """An ioctl failed; carries the request name and errno."""

    def __init__(self, name: str, errno: int, strerror: str, detail: str = "") -> None:
        self.name = name
        self.errno = errno
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{name} failed: {strerror} [errno {errno}]{suffix}")
