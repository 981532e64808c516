"""Numbers one chapter of the report computes and a later one quotes (the conclusion), kept in one JSON file.

A chapter records what it measured, ``findings.record("05", purity_median=0.78, ...)``; the conclusion reads
it back, ``findings.load("05")["purity_median"]``, instead of computing it a second time, so the two
chapters quote the same number and the report is built once. Each record carries a fingerprint of the
shipped model and data; :func:`load` refuses a record made with other ones, or a missing one, with a
message that says which chapter to run first. The report's builder and nbval run the chapters in order,
so the records are always fresh there.

The file is ``.findings.json`` in the working directory (the notebooks' folder when they run), or
``$ZFCORE_FINDINGS``. JSON only: numbers, strings, lists and dicts (numpy values are converted).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from zfcore.errors import ZfcoreError


class FindingsError(ZfcoreError):
    """A finding that is missing or was recorded with another model."""


def path() -> Path:
    return Path(os.environ.get("ZFCORE_FINDINGS") or Path.cwd() / ".findings.json")


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """SHA-256 (first 16 hex digits) over the shipped model, its training history and the test split."""
    assets = Path(__file__).resolve().parent.parent / "assets"
    h = hashlib.sha256()
    for f in sorted([assets / "models" / "fmnist_zf.npz", assets / "models" / "history.json"]
                    + list((assets / "fashion_mnist").glob("*"))):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _plain(v):
    """JSON-ready copies of numpy scalars and arrays, tuples and dict keys."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist"):
        return _plain(v.tolist())
    return v


def _read(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise FindingsError(f"{p}: cannot read the recorded findings ({e}); delete it and rerun the chapters")


def record(chapter: str, **values) -> None:
    """Store ``values`` as chapter ``chapter``'s findings (replacing its earlier ones). Returns None, so
    that a notebook cell ending in this call shows nothing."""
    p = path()
    entry = {"fingerprint": fingerprint(), "values": _plain(values)}
    json.dumps(entry, allow_nan=False)                   # fail here, not in the reader, on NaN or objects
    with _locked(p):                                     # chapters run in parallel record at once
        data = _read(p)
        data[str(chapter)] = entry
        tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, p)


@contextmanager
def _locked(p: Path):
    """An exclusive ``flock`` on ``<file>.lock`` beside the findings (kept: removing it would race)."""
    import fcntl

    with open(p.with_name(p.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(chapter: str) -> dict:
    """The findings chapter ``chapter`` recorded with the shipped model and data."""
    p = path()
    entry = _read(p).get(str(chapter))
    if entry is None:
        raise FindingsError(f"no findings of chapter {chapter} in {p}: run that chapter's notebook first")
    if entry.get("fingerprint") != fingerprint():
        raise FindingsError(f"the findings of chapter {chapter} in {p} were made with another model or "
                            f"data: run that chapter's notebook again")
    return entry["values"]
