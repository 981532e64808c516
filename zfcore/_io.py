"""Atomic file writes: write to a unique temporary file in the target folder, then rename it into place.

A reader never sees a half-written file and a failure leaves no temporary behind. With
``overwrite=False`` the final step is ``os.link`` (fails if the target exists) followed by unlinking
the temporary, so of several concurrent writers exactly one creates the file and the others get
``FileExistsError``; with ``overwrite=True`` it is ``os.replace`` (the last writer wins, the file is
always one writer's complete output).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _finish(tmp: str, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; replace it with --force (overwrite=True in Python)") from None
    except OSError:  # a filesystem without hard links: fall back to a checked rename
        if path.exists():
            raise FileExistsError(f"{path} exists; replace it with --force (overwrite=True in Python)") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write(path, write, overwrite: bool = False, mode: int = 0o644) -> Path:
    """Create ``path`` through ``write(tmp)``, called with the name (a str) of an empty temporary file
    in the same folder, whose name ends with ``path``'s suffix (so ``np.savez`` adds none). The folder is created if needed. Refuses an existing ``path`` unless
    ``overwrite`` (checked before the work too, so nothing is computed for a refused write)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; replace it with --force (overwrite=True in Python)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        _finish(tmp, path, overwrite)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path, data: bytes, overwrite: bool = False) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write, overwrite)


def write_text(path, text: str, overwrite: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path, obj, overwrite: bool = False) -> Path:
    """Deterministic, strict JSON (sorted keys, indent 1, trailing newline; NaN and infinity refused with
    ValueError, as strict parsers would), written atomically."""
    return write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n", overwrite)
