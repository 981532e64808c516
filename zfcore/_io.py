"""Atomic file writes: write to a unique temporary file in the target folder, then rename it into place.

A reader never sees a half-written file and a failure leaves no temporary behind. With
``overwrite=False`` the final step is ``os.link`` (fails if the target exists) followed by unlinking
the temporary, so of several concurrent writers exactly one creates the file and the others get
``FileExistsError``; with ``overwrite=True`` it is ``os.replace`` (the last writer wins, the file is
always one writer's complete output). An ``OSError`` names the file asked for, never the temporary.

``write_set`` writes several files as one set (a command's summary, figures and arrays): every file
is first written to its temporary, then all are renamed into place while a lock on the folder is held
(``fcntl.flock`` on ``FOLDER/.zfcore-lock``, removed again), so two concurrent writers of the same names
never leave a mix of their files; a failure before the renames (a full disk, no permission) leaves
nothing, and a folder the write created is removed again. ``probe_folder`` checks that a folder can
be written (creating it if missing, with a real temporary file) before any work is done.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

LOCK_NAME = ".zfcore-lock"
_RACE_RETRIES = 20


def _named(e: OSError, path) -> OSError:
    """``e`` (same type, errno and reason) naming ``path`` instead of a temporary file."""
    return type(e)(e.errno, e.strerror or str(e), str(path))


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


def _temporary(path: Path, write) -> str:
    """A temporary file beside ``path`` filled by ``write(tmp)``, synced, mode 0644; removed again (and
    an ``OSError`` re-raised naming ``path``) if anything fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise _named(e, path) from None
    os.close(fd)
    with _dropped_on_failure(tmp, path):
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    return tmp


@contextlib.contextmanager
def _dropped_on_failure(tmp: str, path: Path):
    """If the block fails, the temporary ``tmp`` is removed and an ``OSError`` (other than
    ``FileExistsError``, whose message is already the user's) is raised again naming ``path``."""
    try:
        yield
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileExistsError):
            raise _named(e, path) from None
        raise


def atomic_write(path, write, overwrite: bool = False, mode: int = 0o644) -> Path:
    """Create ``path`` through ``write(tmp)``, called with the name (a str) of an empty temporary file
    in the same folder, whose name ends with ``path``'s suffix (so ``np.savez`` adds none). The folder is
    created if needed. Refuses an existing ``path`` unless ``overwrite`` (checked before the work too,
    so nothing is computed for a refused write)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; replace it with --force (overwrite=True in Python)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _named(e, path.parent) from None
    tmp = _temporary(path, write)
    with _dropped_on_failure(tmp, path):
        if mode != 0o644:
            os.chmod(tmp, mode)
        _finish(tmp, path, overwrite)
    return path


def write_bytes(path, data: bytes, overwrite: bool = False) -> Path:
    return atomic_write(path, bytes_writer(data), overwrite)


def write_text(path, text: str, overwrite: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), overwrite)


def json_bytes(obj) -> bytes:
    """Deterministic, strict JSON (sorted keys, indent 1, trailing newline; NaN and infinity refused with
    ValueError, as strict parsers would)."""
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_json(path, obj, overwrite: bool = False) -> Path:
    """``json_bytes(obj)`` written atomically."""
    return write_bytes(path, json_bytes(obj), overwrite)


def _put(tmp: str, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)


def bytes_writer(data: bytes):
    """A ``write(tmp)`` for ``atomic_write`` / ``write_set`` that stores ``data``."""
    return lambda tmp: _put(tmp, data)


# --- folders and sets of files ------------------------------------------------------------------------
def make_folder(folder) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created (outermost first), for
    ``remove_empty``. A concurrent writer that removes a folder it made meanwhile (``remove_empty``) is
    outlasted: the folder is made again. An ``OSError`` names ``folder``."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for attempt in range(_RACE_RETRIES):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return missing[::-1]
        except (FileExistsError, FileNotFoundError) as e:
            # made by another writer, then removed by it before mkdir's own is_dir check: try again
            if os.path.lexists(folder) or attempt == _RACE_RETRIES - 1:
                remove_empty(missing[::-1])
                raise _named(e, folder) from None
        except OSError as e:
            remove_empty(missing[::-1])
            raise _named(e, folder) from None


def _in_folder(folder: Path, work):
    """``make_folder(folder)``, then ``work()``; returns ``(created, work's result)``. If the folder
    vanishes before ``work`` has put a file in it (another writer's ``remove_empty`` of a folder both
    made), both steps run again."""
    for attempt in range(_RACE_RETRIES):
        created = make_folder(folder)
        try:
            return created, work()
        except FileNotFoundError:
            if folder.is_dir() or attempt == _RACE_RETRIES - 1:
                remove_empty(created)
                raise
        except BaseException:
            remove_empty(created)
            raise


def remove_empty(created) -> None:
    """Remove the folders of ``make_folder``'s list that are empty (innermost first)."""
    for p in reversed(list(created)):
        try:
            p.rmdir()
        except OSError:           # not empty (another writer's files), or gone already
            break


def probe_folder(folder) -> None:
    """Check that files can be created in ``folder``: create it if missing, write and remove a
    temporary file there, then remove the folders this created. ``OSError`` naming ``folder``."""
    folder = Path(folder)

    def probe():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".zfcore-probe-")
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(tmp)

    try:
        created, _ = _in_folder(folder, probe)
    except OSError as e:
        raise _named(e, folder) from None
    remove_empty(created)


@contextlib.contextmanager
def folder_lock(folder):
    """Hold an exclusive ``fcntl.flock`` on ``folder/.zfcore-lock`` (created, and removed on release;
    a lock taken on a file another holder has just removed is taken again). Without ``fcntl`` (not
    POSIX) nothing is locked."""
    try:
        import fcntl
    except ImportError:              # pragma: no cover - not POSIX
        yield
        return
    path = Path(folder) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def interrupts_held(keep_off: bool = False):
    """In the main thread: a SIGINT (Ctrl-C) that comes inside the block is held back. On leaving, the
    previous handler is restored and a held interrupt raised as ``KeyboardInterrupt``; with
    ``keep_off`` SIGINT is ignored from then on instead (the caller restores the handler). Elsewhere
    (another thread, where no signal arrives) nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came = []
    previous = signal.signal(signal.SIGINT, lambda *_: came.append(1))
    if previous is None:                  # a handler installed outside Python: restore the default
        previous = signal.SIG_DFL
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if keep_off else previous)
    if came and not keep_off:
        raise KeyboardInterrupt


def _put_in_place(folder: Path, tmps: dict, overwrite: bool) -> list[Path]:
    """Rename each temporary to its name (the folder's lock held); without ``overwrite`` none may exist,
    and if one appears meanwhile the files put in place are removed again."""
    targets = {name: folder / name for name in tmps}
    for p in targets.values():
        if p.is_dir():
            raise IsADirectoryError(21, "is a folder", str(p))
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; replace it with --force (overwrite=True in Python)")
    done = []
    try:
        for name, tmp in list(tmps.items()):
            _finish(tmp, targets[name], overwrite)
            del tmps[name]
            done.append(targets[name])
    except BaseException:
        if not overwrite:
            for p in done:
                p.unlink(missing_ok=True)
        raise
    return done


def write_set(folder, writers: dict, overwrite: bool = False,
              keep_interrupts_off: bool = False) -> list[Path]:
    """Write the files ``{name: write(tmp)}`` into ``folder`` as one set: each to a temporary there,
    then all renamed into place with the folder's lock held and interrupts held back
    (``interrupts_held(keep_interrupts_off)``): concurrent sets of the same names never mix, a
    failure while writing (``OSError`` naming the file asked for) leaves nothing, and a folder created
    for the set is removed again. Without ``overwrite`` an existing file is refused
    (``FileExistsError``) and nothing is written. Returns the paths, in ``writers``' order."""
    folder = Path(folder)
    tmps = {}

    def first():             # the first temporary keeps the folder from another writer's remove_empty
        name, write = next(iter(writers.items()))
        tmps[name] = _temporary(folder / name, write)

    created, _ = _in_folder(folder, first) if writers else (make_folder(folder), None)
    try:
        for name, write in writers.items():
            if name not in tmps:
                tmps[name] = _temporary(folder / name, write)
        with interrupts_held(keep_interrupts_off), folder_lock(folder):
            return _put_in_place(folder, tmps, overwrite)
    except BaseException:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        remove_empty(created)
        raise
