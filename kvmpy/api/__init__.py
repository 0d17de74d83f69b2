"""kvmpy's public Python API: ``VM`` (in-process or a managed child process), its console, QMP and events.

See docs/python-api.md. The modules: ``vm`` (the VM facade), ``options``
(keyword arguments → config or argv), ``console`` (expect/send), ``qmp`` (the
QMP client), ``events`` (the event log), ``errors``, and the two backends
``inprocess`` (the one adapter onto kvmpy's Machine) and ``child``.
"""

from kvmpy.api.errors import (ConsoleClosed, ExpectTimeout, GuestVanished, QMPError, UnsupportedError, VMError,
                              VMGone, WaitTimeout)
from kvmpy.api.events import Event
from kvmpy.api.vm import VM
from kvmpy.config import ConfigError

__all__ = ["VM", "Event", "VMError", "QMPError", "UnsupportedError", "WaitTimeout", "VMGone", "ExpectTimeout",
           "ConsoleClosed", "GuestVanished", "ConfigError"]
