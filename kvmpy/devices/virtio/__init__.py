"""virtio devices: the split virtqueue, the virtio-pci transport and the device models (blk, net, rng, console)."""
