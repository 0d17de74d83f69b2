"""kvm_full samples: on a PVM host these run in the nested bed via the plugin, natively elsewhere."""

import fcntl
import os
from pathlib import Path

import pytest

from kvmpy.kvm.flavor import KvmKind, host_kvm_kind

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01


@pytest.mark.kvm_full
def test_complete_kvm_is_here() -> None:
    assert host_kvm_kind() is KvmKind.COMPLETE
    assert Path("/sys/module/kvm_amd").is_dir()
    assert not Path("/sys/module/kvm_pvm").exists()
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert fcntl.ioctl(fd, KVM_GET_API_VERSION) == 12
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        assert vm >= 0
        os.close(vm)
    finally:
        os.close(fd)


@pytest.mark.kvm_full
def test_tmp_is_a_local_fs_for_unix_sockets(tmp_path: Path) -> None:
    # QEMU cannot put UNIX sockets on 9p; tmp_path must live on L1's tmpfs.
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        s.listen()
