"""kvmpy's version: a leaf module, so anything may import it without depending on the kvmpy package's API."""

__version__ = "0.1.0"
