"""VirtualQ: a multi-tenant virtual queue service."""

__version__ = "0.1.0"
