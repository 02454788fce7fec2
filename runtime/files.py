"""Writing files so that a reader never sees half of one (torch-free): every output of the
project (predictions, datasets, results JSONs, engines' caches) goes through a temporary file
beside the target and a rename."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def temporary_sibling(path: str | os.PathLike) -> str:
    """A new empty file beside ``path`` (same folder, so a rename is atomic), readable by all
    like an ordinary new file (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)
    return tmp


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file beside ``path`` for the block to write; renamed to ``path`` when the
    block succeeds, deleted when it raises, so nothing half-written is ever left at ``path``."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode("utf-8"))
