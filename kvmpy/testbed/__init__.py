"""The nested complete-KVM test bed: an L1 Linux VM under QEMU TCG with kvm-amd."""
