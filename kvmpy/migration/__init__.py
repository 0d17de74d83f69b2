"""Live migration and snapshots."""
