"""vCPU threads: the KVM_RUN loop, exit dispatch, x86 CPU setup and vCPU state."""
