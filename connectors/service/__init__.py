"""The HTTP service over an :class:`connectors.index.Index` (FastAPI; extra ``[serve]``)."""

from connectors.service.app import create_app
from connectors.service.auth import KeyRing
from connectors.service.settings import ServiceSettings

__all__ = ["KeyRing", "ServiceSettings", "create_app"]
