"""Inference backends behind one interface (`base.Backend`); `factory.create_backend` builds one by name."""
from vltseg_core.backends.base import Backend
from vltseg_core.backends.factory import available_backends, create_backend

__all__ = ["Backend", "available_backends", "create_backend"]
