"""The native x86-64 code tier of the TCG: an x86-64 emitter, executable memory, and a backend from kvmpy IR to machine code."""
