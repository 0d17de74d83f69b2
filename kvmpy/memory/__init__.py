"""Guest memory: RAM blocks, the MemoryRegion tree, address spaces mapped to KVM slots, dirty tracking."""
