"""The block layer: raw and qcow2 drivers behind one BlockBackend interface, and kvmpy-img."""
