"""Assets for the Linux boot tests: Debian's cloud kernel and a busybox initramfs made by ``kvmpy initrd``.

Both are cached under kvmpy's cache directory. L1 sees the host root read-only
and has no network, so when the kvm_full tests will run in the nested bed, the
host session prepares the assets first (``pytest_collection_finish``); inside
the bed the fixture then only finds them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmpy.kvm.flavor import host_kvm_kind
from kvmpy.tools.fetch import cache_root, fetch_busybox, fetch_kernel
from kvmpy.testbed.pytest_plugin import OFF, decide_mode
from tests.linux.rootdisk import RootDisk, prepare_root_disk

log = logging.getLogger(__name__)

INIT_SCRIPT = """#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/$m" || echo "KVMPY-TEST insmod $m failed"; done < /etc/kvmpy-modules
echo "KVMPY-TEST init online=$(cat /sys/devices/system/cpu/online) sha256=$(sha256sum /payload | cut -d' ' -f1) uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "KVMPY-TEST cmdline=[$(cat /proc/cmdline)]"
for w in $(cat /proc/cmdline); do
    case "$w" in kvmpy_test=*) action="${w#kvmpy_test=}";; esac
done
case "$action" in
    poweroff) poweroff -f;;
    reboot) reboot -f;;
    powerbutton)
        # busybox acpid maps the button's KEY_POWER to the action PWRF/00000080 under -c DIR.
        mkdir -p /etc/acpi/PWRF
        printf '#!/bin/sh\necho KVMPY-TEST power button pressed >/dev/console\npoweroff -f\n' > /etc/acpi/PWRF/00000080
        chmod +x /etc/acpi/PWRF/00000080
        acpid -c /etc/acpi -l /dev/null -p /tmp/acpid.pid
        sleep 1
        echo "KVMPY-TEST acpid listening: $(ls /dev/input)"
        sleep 120;;
    *) exec sh;;
esac
sleep 30
"""


@dataclass(frozen=True)
class LinuxAssets:
    kernel: Path
    initrd: Path
    payload_sha256: str


def _payload() -> bytes:
    return random.Random(20240611).randbytes(300_000)


MODULES = [
    "button", "evdev",  # the ACPI power button and the event device acpid reads
    "virtio_pci",  # the virtio-pci transport
    "virtio_blk",  # disks (test_virtio_blk_guest.py)
    "virtio_net",  # NICs (test_virtio_net.py, the netdev tests)
    "virtio_rng",  # /dev/hwrng (test_virtio_rng.py)
]


def prepare_assets(build: bool = True) -> LinuxAssets:
    """Fetch the cloud kernel and build the test initramfs (cached); ``build=False`` only looks."""
    kernel = fetch_kernel("cloud-amd64")
    busybox = fetch_busybox()
    payload = _payload()
    st = busybox.stat()
    key = hashlib.sha256(INIT_SCRIPT.encode() + payload + f"{busybox}:{st.st_size}:{st.st_mtime_ns}".encode()
                         + f"{kernel.modules_dir}:{MODULES}".encode())
    out_dir = cache_root() / "linux-tests"
    initrd = out_dir / f"initrd-{key.hexdigest()[:16]}.gz"
    if not initrd.exists():
        if not build:
            raise FileNotFoundError(f"{initrd} was not prepared on the host")
        from kvmpy.tools.initrd import main as initrd_main

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "init.sh").write_text(INIT_SCRIPT)
        (out_dir / "payload.bin").write_bytes(payload)
        status = initrd_main(["-o", str(initrd), "--busybox", str(busybox), "--init", str(out_dir / "init.sh"),
                              "--file", f"{out_dir / 'payload.bin'}:payload",
                              "--modules-dir", str(kernel.modules_dir), *(a for m in MODULES for a in ("-m", m))])
        if status != 0:
            raise RuntimeError(f"kvmpy initrd failed with status {status}")
    return LinuxAssets(kernel.vmlinuz, initrd, hashlib.sha256(payload).hexdigest())


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.environ.get("KVMPY_IN_BED") == "1":
        return
    wanted = any(i.get_closest_marker("kvm_full") and "tests/linux/" in i.nodeid for i in session.items)
    if not wanted or decide_mode(os.environ, host_kvm_kind()) == OFF:
        return
    try:
        prepare_assets()
    except Exception as exc:  # the tests report it properly; collection must not die here
        log.warning("cannot prepare the Linux test assets: %s", exc)
    pending_skipped = os.environ.get("KVMPY_BED_PENDING") != "1"
    for module in {i.module for i in session.items if i.get_closest_marker("kvm_full") and "tests/linux/" in i.nodeid
                   and not (pending_skipped and i.get_closest_marker("bed_pending"))}:
        prepare = getattr(module, "prepare_bed_assets", None)  # a test module's own guest images
        if prepare is not None:
            try:
                prepare()
            except Exception as exc:
                log.warning("cannot prepare the assets of %s: %s", module.__name__, exc)


@pytest.fixture(scope="session")
def linux_assets() -> LinuxAssets:
    try:
        return prepare_assets(build=os.environ.get("KVMPY_IN_BED") != "1")
    except Exception as exc:
        pytest.fail(f"Linux test assets are unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def root_disk() -> RootDisk:
    """An ext4 root file system on a qcow2 and an initramfs that mounts root= (tests/linux/rootdisk.py)."""
    try:
        return prepare_root_disk(build=os.environ.get("KVMPY_IN_BED") != "1")
    except Exception as exc:
        pytest.fail(f"the root disk is unavailable: {exc}", pytrace=False)
