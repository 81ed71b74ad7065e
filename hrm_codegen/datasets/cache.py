"""File hashing, atomic writes, and an on-disk cache of encoded datasets keyed by what they were built from."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    """Sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and os.replace."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cache_path(cache_dir: str | Path, key: dict) -> Path:
    """The cache file for `key`: a sha256 of the key's canonical JSON."""
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return Path(cache_dir) / f"{key.get('kind', 'cache')}-{digest[:20]}.pt"


def load_or_build(cache_dir: str | Path, key: dict, build_fn: Callable[[], Any]) -> Any:
    """Return the value cached under `key` in `cache_dir`, or build it with `build_fn` and store it.

    The value must be plain data (lists, dicts, ints, strings, tensors); the key (JSON-serialisable) is
    stored with it and compared on load, so a differing key always rebuilds.
    """
    path = cache_path(cache_dir, key)
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
        except Exception as err:  # torch.load raises many types on a damaged file; all mean "rebuild"
            logger.warning("unreadable cache file %s (%s); rebuilding", path, err)
        else:
            if isinstance(stored, dict) and stored.get("key") == key:
                logger.info("reusing cached %s", path)
                return stored["value"]
    value = build_fn()
    buffer = io.BytesIO()
    torch.save({"key": key, "value": value}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    logger.info("cached %s", path)
    return value
