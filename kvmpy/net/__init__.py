"""Network backends behind -netdev: tap (with vhost-net), stream (QEMU's framing, passt) and user (passt)."""
