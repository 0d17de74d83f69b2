"""The QMP monitor server."""
