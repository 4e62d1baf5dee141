"""API keys with two roles, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

Role = Literal["read", "admin"]


class KeyRing:
    """Role of a presented key. Keys are kept only as SHA-256 digests and every configured
    digest is compared (``hmac.compare_digest``) whatever matches, so neither the timing nor a
    memory dump tells a key."""

    def __init__(self, read_keys: list[str], admin_keys: list[str]) -> None:
        self._keys = [(self._digest(k), "admin") for k in admin_keys]
        self._keys += [(self._digest(k), "read") for k in read_keys]

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8")).digest()

    @property
    def empty(self) -> bool:
        return not self._keys

    def role(self, presented: str | None) -> Role | None:
        if not presented:
            return None
        d = self._digest(presented)
        found: Role | None = None
        for digest, role in self._keys:
            if hmac.compare_digest(d, digest) and found != "admin":
                found = role  # type: ignore[assignment]
        return found
