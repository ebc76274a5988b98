"""The resume record of one object: ``RELEASE_DIR/.upload-state/<name>.<tag>.json``.

One small JSON file per object (upload id, part size, per-part md5, the local
file's size/mtime/sha256, and once done the object's ETag), read and written
through :class:`~objathor_release.publish.localfiles.StateDir` (a real folder
opened by descriptor; records written to a temporary name and renamed). A record
that does not match the object's target and the local file's identity is
foreign: the upload starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from objathor_release.publish.localfiles import STATE_DIR, StateDir

__all__ = ["UploadState"]

STATE_SAVE_INTERVAL = 2.0  # seconds between state-file writes while parts complete


class UploadState:
    """The resume record of one object: a small JSON file under ``RELEASE_DIR/.upload-state/``."""

    def __init__(self, folder: StateDir | None, name: str, data: dict[str, Any],
                 unreadable: bool = False) -> None:
        self.folder, self.name, self.data, self.unreadable = folder, name, data, unreadable
        self._lock = threading.Lock()
        self._last_save = 0.0

    @property
    def path(self) -> Path:
        return (self.folder.path if self.folder is not None else Path(STATE_DIR)) / self.name

    @staticmethod
    def name_for(endpoint: str, bucket: str, key: str, name: str) -> str:
        tag = hashlib.sha1(f"{endpoint}\n{bucket}\n{key}".encode(), usedforsecurity=False).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        return f"{slug}.{tag}.json"

    @classmethod
    def load(cls, folder: StateDir | None, name: str) -> UploadState:
        """The record (empty when absent; ``unreadable`` when it is not a JSON object)."""
        raw = folder.read(name) if folder is not None else None
        if raw is None:
            return cls(folder, name, {})
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls(folder, name, {}, unreadable=True)  # treated as foreign, and replaced
        return cls(folder, name, data)

    def matches(self, target: dict[str, Any], identity: dict[str, Any]) -> bool:
        return all(self.data.get(k) == v for k, v in {**target, **identity}.items())

    @property
    def md5s(self) -> dict[int, bytes]:
        out = {}
        parts = self.data.get("parts")
        for k, v in (parts.items() if isinstance(parts, dict) else ()):
            with contextlib.suppress(ValueError, TypeError):
                md5 = bytes.fromhex(v)
                if len(md5) == 16:
                    out[int(k)] = md5
        return out

    def record_part(self, number: int, md5: bytes) -> None:
        with self._lock:
            parts = self.data.get("parts")
            if not isinstance(parts, dict):
                parts = self.data["parts"] = {}
            parts[str(number)] = md5.hex()
            if time.monotonic() - self._last_save >= STATE_SAVE_INTERVAL:
                self._save_locked()

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        if self.folder is not None:
            self.folder.write(self.name, json.dumps(self.data, sort_keys=True).encode())
        self._last_save = time.monotonic()

    def delete(self) -> None:
        if self.folder is not None:
            self.folder.delete(self.name)
