"""Writing outputs safely: to a temporary name first, then renamed, so no half-written file is ever visible."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seglab.errors import SeglabError


def atomic_write(path: Path, write: Callable[[Path], Any], durable: bool = True) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``; the file gets the usual permissions (0666 less
    the umask), not the 0600 of a temporary file. ``durable``: fsync the file before the rename and the folder
    after it, so a power loss leaves the old file or the new one, never an empty or partial one."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SeglabError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask)
        if durable:
            fsync_path(Path(tmp))
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename inside it durable; not every OS allows it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents) if needed and check that it can be written to; SeglabError (one
    line naming the folder) if a file blocks it or it is not writable."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SeglabError(f"{what} {path} is blocked by a file of that name; choose another path") from None
    except OSError as e:
        raise SeglabError(f"cannot create {what} {path}: {e.strerror or e}") from None
    if not path.is_dir():
        raise SeglabError(f"{what} {path} is blocked by a file of that name; choose another path")
    if not os.access(path, os.W_OK | os.X_OK):
        raise SeglabError(f"{what} {path} is not writable; choose another path or fix its permissions")
    return path


def jsonable(obj: Any) -> Any:
    """NaN and infinities become None (JSON null), recursively: the output stays standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(to_json(obj, indent=2) + "\n"))


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to a log file and fsync it (a kill can cut the last line short; readers drop such a line)."""
    with Path(path).open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_out_dir(path: str | Path, what: str = "output folder") -> None:
    """SeglabError (one line) unless folder ``path`` exists and is writable or could be created; creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SeglabError(f"{what} {path} is blocked by the file {probe}; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SeglabError(
            f"{what} {path} is not writable ({probe}); choose another path or fix its permissions"
        )
