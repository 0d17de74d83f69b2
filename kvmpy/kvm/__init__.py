"""The raw KVM layer: ioctl numbers, struct layouts and the system/VM/vCPU file descriptors."""
