"""The two ways kvmpy issues an ioctl, with errors turned into KvmIoctlError.

``fcntl.ioctl`` is used for buffers (the kernel writes back into a mutable
buffer). Plain integer arguments go through libc via cffi, because
``fcntl.ioctl`` converts them to a C int and overflows on values such as
0xfffbd000.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
from typing import Any

from kvmpy.kvm.abi import ffi
from kvmpy.kvm.errors import KvmIoctlError
from kvmpy.kvm.ioctls import NAMES

_libc = ffi.dlopen(None)


def ioctl_buf(fd: int, request: int, buf: Any) -> int:
    """ioctl with a struct buffer (a cffi pointer or a writable bytes-like)."""
    if fd < 0:  # a closed fd object: the same error libc gives, not fcntl's ValueError
        raise KvmIoctlError(NAMES.get(request, hex(request)), _errno.EBADF, os.strerror(_errno.EBADF))
    target = ffi.buffer(buf) if isinstance(buf, ffi.CData) else buf
    try:
        return fcntl.ioctl(fd, request, target, True)
    except OSError as exc:
        raise KvmIoctlError(NAMES.get(request, hex(request)), exc.errno or 0,
                            exc.strerror or "error") from None


def ioctl_int(fd: int, request: int, arg: int = 0) -> int:
    """ioctl with an unsigned-long argument; returns the non-negative result."""
    ret = _libc.ioctl(fd, request, ffi.cast("unsigned long", arg))
    if ret < 0:
        err = ffi.errno
        raise KvmIoctlError(NAMES.get(request, hex(request)), err, os.strerror(err))
    return ret


def is_eintr(exc: KvmIoctlError) -> bool:
    return exc.errno == _errno.EINTR
