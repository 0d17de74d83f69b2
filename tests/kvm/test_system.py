"""Kvm: clear errors when /dev/kvm is missing or unusable, and the capabilities kvmpy relies on."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from kvmpy.kvm import abi
from kvmpy.kvm.errors import KvmCapabilityError, KvmUnavailableError
from kvmpy.kvm.flavor import KvmKind, host_kvm_kind
from kvmpy.kvm.system import Kvm


def test_missing_device_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(KvmUnavailableError, match="modprobe"):
        Kvm.open(tmp_path / "kvm")


def test_wrong_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="KVM_GET_API_VERSION|API version"):
        Kvm.open(Path("/dev/null"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open anything")
def test_permission_denied_mentions_the_kvm_group(tmp_path: Path) -> None:
    dev = tmp_path / "kvm"
    dev.write_text("")
    dev.chmod(0)
    with pytest.raises(KvmUnavailableError, match="kvm' group"):
        Kvm.open(dev)


def test_flavor_detection(tmp_path: Path) -> None:
    dev = tmp_path / "kvm"
    mods = tmp_path / "module"
    mods.mkdir()
    assert host_kvm_kind(dev, mods) is KvmKind.MISSING
    dev.write_text("")
    assert host_kvm_kind(dev, mods) is KvmKind.COMPLETE
    (mods / "kvm_pvm").mkdir()
    assert host_kvm_kind(dev, mods) is KvmKind.PVM


@pytest.mark.kvm_host
def test_capabilities_and_missing_capability_message() -> None:
    with Kvm.open() as kvm:
        kvm.require(abi.CAP_IRQCHIP, abi.CAP_USER_MEMORY)
        assert kvm.vcpu_mmap_size() >= 4096
        assert any(e.function == 0 for e in kvm.supported_cpuid())
        kvm._caps[abi.CAP_PIT2] = 0  # pretend the kernel lacks it
        with pytest.raises(KvmCapabilityError, match="KVM_CAP_PIT2"):
            kvm.require(abi.CAP_PIT2)


def test_vm_creation_survives_signals_arriving_meanwhile() -> None:
    """A signal pending while KVM sets a VM up makes KVM_CREATE_VM fail with EINTR; that is retried,
    not reported (a profiler or a SIGCHLD from a child must not make VM creation fail)."""
    caught = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal caught
        caught += 1

    old = signal.signal(signal.SIGUSR1, on_signal)
    stop = threading.Event()
    main = threading.main_thread().ident
    assert main is not None

    def pester() -> None:
        while not stop.is_set():
            signal.pthread_kill(main, signal.SIGUSR1)
            time.sleep(0)

    t = threading.Thread(target=pester)
    t.start()
    try:
        with Kvm.open() as kvm:
            for _ in range(200):
                kvm.create_vm().close()
    finally:
        stop.set()
        t.join()
        signal.signal(signal.SIGUSR1, old)
    assert caught > 0
