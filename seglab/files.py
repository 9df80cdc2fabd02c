"""Writing outputs safely: to a temporary name first, then renamed, so no half-written file is ever visible."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    except BaseException as e:
        full = disk_full(path.parent, e)  # before the unlink frees the temporary's space
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise SeglabError(no_space_message(path)) from None
        raise


def disk_full(folder: Path, e: BaseException) -> bool:
    """Whether ``e``, raised while writing into ``folder``, means its file system is full: ENOSPC or EDQUOT, or
    an error without an errno (torch.save's "iostream error") with under 1 MiB left there."""
    import errno
    import shutil

    if isinstance(e, OSError) and e.errno is not None:
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(e, OSError | RuntimeError):
        return False
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def no_space_message(path: Path) -> str:
    return f"cannot write {path}: no space left on its file system; free some space or choose another output path"


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
    try:
        with Path(path).open("a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if disk_full(Path(path).parent, e):
            raise SeglabError(no_space_message(Path(path))) from None
        raise


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


# ---- The output guard: what is already at an output path, and whether a command may replace it ----------------
#
# Every command that writes goes through ``guard_file`` (one output file) or ``guard_dir`` (an output folder, then
# ``guard_file`` for each file it will write there), before any work. The rules:
#   - nothing is ever written into a data set (a folder holding classes.yaml, or images/ and masks/);
#   - a file the command itself wrote earlier (recognised by its kind: suffix plus the header or keys seglab
#     writes) is replaced; anything else needs --overwrite;
#   - a checkpoint, a checkpoint's sidecar, a training state or a run's own log/config is never replaced.

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_SOFTWARE = "seglab"  # the Software text chunk of every PNG seglab.data.io writes
RUN_MARKERS = ("metrics.jsonl", "last.state.pt", "best.safetensors", "last.safetensors")
RUN_OWN_FILES = ("config.yaml", "plan.yaml", "metrics.jsonl", ".lock")
CHECKPOINT_FORMAT = "seglab-checkpoint/1"  # seglab.checkpoint.FORMAT (not imported: it pulls in the configs)
STATE_MARK = b"seglab-train-state"  # seglab.engine.state.STATE_FORMAT's prefix, in the state's pickle


@dataclass(frozen=True)
class OutputKind:
    """A kind of file a command writes: ``suffixes`` its names end with (empty: any) and ``recognise(path)``,
    true for a file of this kind written earlier (which the command may replace)."""

    name: str
    suffixes: tuple[str, ...]
    recognise: Callable[[Path], bool]


def file_head(path: Path, n: int = 4096) -> bytes:
    try:
        with Path(path).open("rb") as f:
            return f.read(n)
    except OSError:
        return b""


def read_json_file(path: Path, limit: int = 256 << 20) -> Any:
    """The JSON document in ``path``, or None (not JSON, unreadable, or over ``limit`` bytes)."""
    try:
        if Path(path).stat().st_size > limit:
            return None
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_yaml_file(path: Path, limit: int = 16 << 20) -> Any:
    """The YAML document in ``path``, or None (not YAML, unreadable, or over ``limit`` bytes)."""
    import yaml

    try:
        if Path(path).stat().st_size > limit:
            return None
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def is_png(path: Path) -> bool:
    return file_head(path, 8) == PNG_MAGIC


def is_seglab_png(path: Path) -> bool:
    """A PNG that seglab wrote (masks, overlays, maps): it carries the ``Software: seglab`` text chunk, which
    Pillow puts before the pixel data (after the header and a palette of at most 768 bytes)."""
    head = file_head(path, 4096)
    return head[:8] == PNG_MAGIC and b"tEXtSoftware\x00" + PNG_SOFTWARE.encode() in head


def json_with(*keys: str, without: tuple[str, ...] = ()) -> Callable[[Path], bool]:
    """A recogniser: a JSON object holding every one of ``keys`` (the keys seglab writes into that report) and
    none of ``without`` (those of a sibling report)."""

    def recognise(path: Path) -> bool:
        doc = read_json_file(path)
        return isinstance(doc, dict) and all(k in doc for k in keys) and not any(k in doc for k in without)

    return recognise


def safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), or None."""
    raw = file_head(path, 8)
    if len(raw) != 8:
        return None
    size = int.from_bytes(raw, "little")
    if not 2 <= size <= 100 << 20:
        return None
    try:
        with Path(path).open("rb") as f:
            f.seek(8)
            doc = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_train_state(path: Path) -> bool:
    """A seglab training state (``last.state.pt``, under any name): a torch zip whose pickle names its format."""
    import zipfile

    if Path(path).name.endswith(".state.pt"):
        return True
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.endswith("data.pkl")]
            return any(STATE_MARK in z.read(n) for n in pickles[:1])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return False


def checkpoint_sidecar_of(path: Path) -> str | None:
    """The ``weights`` file named by a seglab checkpoint sidecar, or None if ``path`` is not one."""
    if Path(path).suffix not in (".yaml", ".yml"):
        return None
    doc = read_yaml_file(path)
    if isinstance(doc, dict) and doc.get("format") == CHECKPOINT_FORMAT:
        return str(doc.get("weights") or "")
    return None


def data_set_root(path: str | Path) -> Path | None:
    """The data set that ``path`` is or lies in (the nearest folder holding classes.yaml, or images/ and
    masks/), or None."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if (d / "classes.yaml").is_file() or ((d / "images").is_dir() and (d / "masks").is_dir()):
            return d
    return None


def run_root(path: str | Path) -> Path | None:
    """The run folder that ``path`` is or lies in (the nearest folder holding a training log, state or
    checkpoint of ``seglab train``), or None."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if any((d / n).is_file() for n in RUN_MARKERS):
            return d
    return None


def protected(path: Path) -> str | None:
    """What ``path`` is, if it is a file seglab never replaces: a checkpoint, a checkpoint's sidecar, a training
    state, a run's own log or config, a data-set file. None otherwise."""
    path = Path(path)
    ds = data_set_root(path.parent)
    if ds is not None:
        return f"a file of the data set {ds}"
    header = safetensors_header(path) or {}
    if path.suffix == ".safetensors" or "seglab" in (header.get("__metadata__") or {}):
        return "a checkpoint (safetensors weights)"
    if is_train_state(path):
        return "a training state (the resume point of a run)"
    weights = checkpoint_sidecar_of(path)
    if weights is not None:
        return f"the sidecar of the checkpoint {path.parent / weights}"
    run = run_root(path.parent)
    own = path.parent.resolve() == run and path.name in RUN_OWN_FILES
    if run is not None and (own or "tensorboard" in path.parts):
        return f"a file of the run {run}"
    return None


def describe(path: Path) -> str:
    """A few words on what is at ``path``, for messages."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return "a dangling symbolic link"
    if path.is_dir():
        return "a folder"
    head = file_head(path, 8)
    if head == PNG_MAGIC:
        return "a PNG image"
    if head[:2] == b"PK":
        return "a zip file"
    if read_json_file(path, 1 << 20) is not None:
        return "a JSON file"
    try:
        size = path.stat().st_size
    except OSError:
        return "a file"
    return f"a file of {size} bytes"


def guard_file(path: str | Path, kind: OutputKind, overwrite: bool = False, option: str = "--out") -> Path:
    """Check, before any work, that ``path`` may receive a ``kind`` output: its name ends with one of the kind's
    suffixes, it is not a folder, it does not lie in a data set, and whatever is already there is an earlier
    output of this kind, or (with ``overwrite``) a file of another kind that is not protected (see
    :func:`protected`). ConfigError (one line naming the path, what it is and the fix) otherwise."""
    from seglab.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        example = path / ("out" + (kind.suffixes[0] if kind.suffixes else ""))
        raise ConfigError(f"{option} {path} is a folder; give a file path such as {example}")
    ds = data_set_root(path.parent)
    if ds is not None:
        raise ConfigError(
            f"{option} {path} lies in the data set {ds}; seglab never writes into a data set: choose a path "
            "outside it"
        )
    suffix_ok = not kind.suffixes or path.name.endswith(kind.suffixes)
    exists = path.exists() or path.is_symlink()
    if exists and suffix_ok and kind.recognise(path):
        return path
    what = protected(path) if exists else None
    if what is not None:
        raise ConfigError(f"{option} {path} is {what}; seglab never overwrites it: choose another path")
    if not suffix_ok:
        raise ConfigError(
            f"{option} {path}: a seglab {kind.name} is a {' or '.join(kind.suffixes)} file; give such a path"
        )
    if exists and not overwrite:
        raise ConfigError(
            f"{option} {path} already exists and is {describe(path)}, not a seglab {kind.name}; choose another "
            "path or pass --overwrite to replace it"
        )
    return path


def guard_dir(path: str | Path, what: str, option: str = "--out", run_folder: bool = False) -> Path:
    """Check, before any work, that folder ``path`` may receive outputs: it is (or can be made) a writable folder,
    it is not and does not lie in a data set, and it is not itself a run folder unless ``run_folder`` (a report
    of the run). Creates nothing; then check each file with :func:`guard_file`."""
    from seglab.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is blocked by a file of that name; choose another path")
    check_out_dir(path, what)
    ds = data_set_root(path)
    if ds is not None:
        where = "is the data set" if path.resolve() == ds else f"lies in the data set {ds}"
        raise ConfigError(
            f"{option} {path} {where}; seglab never writes into a data set: choose a folder outside it"
        )
    run = run_root(path)
    if not run_folder and run is not None and run == path.resolve():
        raise ConfigError(
            f"{option} {path} is a run folder; choose a folder of its own, e.g. {path / 'predictions'}"
        )
    return path


# ---- One writer per run folder -----------------------------------------------------------------------------

LOCK_FILE = ".lock"
_HELD: dict[
    str, list[Any]
] = {}  # resolved run folder -> [file descriptor, depth]: the locks this process holds


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of run folder ``run_dir`` (``flock`` on ``run_dir/.lock``, which records the
    holder's PID) for the duration; created if needed. A second writer (another process) gets one line naming the
    holder's PID. Re-entrant within a process. The lock file is removed on release. (No lock where the OS has no
    ``fcntl``.)"""
    from seglab.errors import ConfigError

    run_dir = ensure_dir(run_dir, "run folder")
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"run folder {run_dir} is in use by process {holder} (it holds {path}); wait for it to end or "
                "stop it, then run this again"
            ) from None
        try:  # the holder before us may have removed the file on release: lock the one that is there now
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        path.unlink(missing_ok=True)  # still held: a waiting process then retries on a fresh file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
