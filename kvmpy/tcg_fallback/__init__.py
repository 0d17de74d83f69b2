"""TCG-style translator that runs guests of other architectures without KVM."""
