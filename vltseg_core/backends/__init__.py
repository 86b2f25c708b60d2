"""Inference backends behind one interface (`base.Backend`); `create_backend` picks one by name or `auto`."""
from vltseg_core.backends.base import Backend, available_backends, create_backend

__all__ = ["Backend", "available_backends", "create_backend"]
