"""Files written whole or not at all, and file hashes: the leaf every layer that writes imports.

Every file ferbench writes (run records, checkpoints, caches, reports, exports, extracted weights)
goes to a temporary name in the same folder, is flushed, fsynced and renamed, so a reader sees the
old file or the new one and a crash leaves the previous version intact. Nothing here imports the
rest of ferbench but its error type.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ferbench.errors import FerbenchError, first_line, one_line

MAX_IMAGE_PIXELS = 40_000_000  # the largest image ferbench decodes (dataset files, predict's photos): a face is far smaller
MAX_CLASSES = 1000  # a classification head, confusion table and per-class figures of more are not a FER dataset
MAX_SPEC_BYTES = 1 << 20  # a spec is a few kilobytes
NPZ_LIMIT_ENV = "FERBENCH_MAX_NPZ_GB"  # raises the bound on what one .npz may hold once decompressed
DEFAULT_NPZ_GB = 8.0
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_target(path: Path) -> None:
    """Refuse to write over what is not a file of ours: a symbolic link (the write would land where it
    points), a device, a named pipe, a socket or a folder. One line; nothing is written."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise FerbenchError(f"{path}: cannot write ({e.strerror or first_line(e)})") from None
    import stat

    if stat.S_ISLNK(st.st_mode):
        raise FerbenchError(f"{path}: is a symbolic link; ferbench never writes through one (remove it or choose another path)")
    if not stat.S_ISREG(st.st_mode):
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "device, pipe or socket"
        raise FerbenchError(f"{path}: exists and is a {kind}, not a file; refused, nothing written")


NAME_MAX = 255  # bytes in one file or folder name on Linux, macOS and Windows file systems


def expand_user(path: str | Path) -> Path:
    """`~` and `~user` expanded, as for every path ferbench is given (options, spec fields, environment);
    a `~user` with no such user, or a name longer than file systems take, is one line (pathlib's own
    expanduser raises RuntimeError for the first)."""
    text = str(path)
    expanded = os.path.expanduser(text)
    if text.startswith("~") and expanded == text:
        raise FerbenchError(f"{text}: no such user's home folder")
    long = next((part for part in Path(expanded).parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise FerbenchError(f"{long[:40]}...: a file or folder name of {len(os.fsencode(long))} bytes; file systems "
                            f"take at most {NAME_MAX}")
    return Path(expanded)


def regular_file(path: Path, what: str) -> Path:
    """`path` if it is a regular file; one line otherwise (missing, a folder, or a pipe or device, which
    would block a reader forever or never end)."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        raise FerbenchError(f"{path}: {what} not found") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe, socket or device"
        raise FerbenchError(f"{path}: {what} must be a regular file, not {kind}")
    return path


def env_gib(name: str, default: float | None) -> float | None:
    """A size in GiB from the environment variable `name` (`default` when unset or empty); anything
    but a finite positive number is one line naming the variable (it would otherwise make every
    record unreadable, or refuse nothing)."""
    import math

    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise FerbenchError(f"{name}={one_line(raw[:40])!r}: expected a positive number of GiB")
    return value


def npz_limit_bytes() -> int:
    """What one .npz may hold decompressed: DEFAULT_NPZ_GB, or FERBENCH_MAX_NPZ_GB."""
    return int(env_gib(NPZ_LIMIT_ENV, DEFAULT_NPZ_GB) * 2**30)


TABLE_LIMIT_ENV = "FERBENCH_MAX_TABLE_GB"  # raises the bound on a dataset's text table (CSV), decompressed
DEFAULT_TABLE_GB = 1.0  # FER-2013's CSV is 0.29 GB; pandas peaks at 2-4x a table's size (4x for one long line)


def bounded_table(path: Path) -> Path | io.BytesIO:
    """What pandas should read for a dataset's text table `path`, once bounded: the path of a regular
    file of at most the limit, or, for a .gz, its bytes decompressed here in chunks up to the limit (a
    90 MB .gz can hold gigabytes: a 3 GB table of one line had pandas killed at 23 GB here).
    FerbenchError naming the file and the limit otherwise."""
    import gzip

    limit = int(env_gib(TABLE_LIMIT_ENV, DEFAULT_TABLE_GB) * 2**30)

    def too_big(how: str = "") -> FerbenchError:
        return FerbenchError(f"{path}: larger than the {limit / 2**30:.3g} GiB ferbench reads for a dataset table{how} "
                             f"({TABLE_LIMIT_ENV} raises it)")

    try:
        with open_regular(path) as f:
            if path.suffix != ".gz":
                if os.fstat(f.fileno()).st_size > limit:
                    raise too_big()
                return path
            out, total = io.BytesIO(), 0
            with gzip.GzipFile(fileobj=f) as z:
                while chunk := z.read(1 << 24):
                    total += len(chunk)
                    if total > limit:
                        raise too_big(" once decompressed")
                    out.write(chunk)
            out.seek(0)
            return out
    except (OSError, EOFError) as e:
        raise FerbenchError(f"{path}: not a readable CSV ({first_line(e)})") from None


def load_npz(path: Path, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz (those named in `keys`, when given), never unpickled, after checking from
    the archive's directory that they decompress to at most `npz_limit_bytes()`: a small file can
    declare gigabytes. Raises FerbenchError naming the file for anything unreadable."""
    import zipfile

    regular_file(path, "array file")
    limit = npz_limit_bytes()
    try:
        with zipfile.ZipFile(path) as zf:
            wanted = [i for i in zf.infolist() if keys is None or i.filename.removesuffix(".npy") in keys]
            declared = sum(i.file_size for i in wanted)
        if declared > limit:
            raise FerbenchError(f"{path}: its arrays decompress to {declared / 2**30:.1f} GiB, above the "
                                f"{limit / 2**30:g} GiB ferbench reads ({NPZ_LIMIT_ENV} raises it)")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if keys is None or k in keys}
    except FerbenchError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FerbenchError(f"{path}: not a readable .npz of plain arrays ({first_line(e)})") from None


def write_atomic(path: Path, fill: Callable[[Path], Any]) -> None:
    """Let `fill` write a temporary file (given by path) beside `path`, fsync it and rename it over
    `path`, so readers see the old file or the new one, never a part. A target that is a link, a
    device, a pipe or a folder is refused first (`check_target`): the rename would replace it."""
    write_together([(path, fill)])


def write_together(items: list[tuple[Path, Callable[[Path], Any]]]) -> None:
    """Files that belong together (a model and its sidecar, a compare page's files), each filled into a
    temporary file beside its target and fsynced, and renamed over the targets only once all are: a
    failure while writing any of them (a full disk, a failed check) leaves every old file as it was."""
    targets = [path for path, _ in items]
    if len({p.absolute() for p in targets}) < len(targets):
        raise FerbenchError(f"{', '.join(map(str, targets))}: two of these files would have the same name")
    for path in targets:
        check_target(path)
    temps: list[Path] = []
    try:
        for path, fill in items:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as e:
                raise FerbenchError(f"{path}: cannot write ({e.strerror or first_line(e)})") from None
            os.close(fd)
            temps.append(Path(tmp))
            try:
                fill(Path(tmp))
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fchmod(fd, 0o666 & ~_UMASK)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:  # a full disk, a quota, a folder made read-only: one line, the old file kept
                raise FerbenchError(f"{path}: cannot write ({e.strerror or first_line(e)}); "
                                    "the previous version, if any, is intact") from None
        for path, tmp in zip(targets, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda p: p.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """`obj` as the JSON every ferbench file holds: indented, keys sorted, numpy values as numbers."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json_text(obj))


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def fill(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: given a path, numpy would append ".npz" to it
            np.savez_compressed(f, **arrays)

    write_atomic(path, fill)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


MAX_TEXT_BYTES = 64 << 20  # a record's JSON, YAML or CSV: a history of 10,000 epochs is about 2 MB


class NotAPlainFile(OSError):
    """A file to read that is a folder, pipe or device (a link to /dev/zero never ends; a pipe blocks)."""


class FileTooLarge(OSError):
    """A text file over the size ferbench reads for it."""


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (links followed); NotAPlainFile for a
    folder, pipe or device. Opened without blocking and checked on the open file."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAPlainFile("not a regular file (a folder, pipe or device)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: Path, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (links followed); NotAPlainFile or
    FileTooLarge (both OSError, which every record reader already reports as unreadable) before
    anything large is read. Opened without blocking and checked on the open file, so a pipe swapped
    in after a check cannot hang it."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise FileTooLarge(f"{size:,} bytes, above the {limit:,} ferbench reads for it")
        data = f.read(limit + 1)  # /proc files report size 0
    if len(data) > limit:
        raise FileTooLarge(f"more than the {limit:,} bytes ferbench reads for it")
    return data


def read_text_bounded(path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    """`read_bounded` as UTF-8 text (UnicodeDecodeError, a ValueError, when it is not)."""
    return read_bounded(path, limit).decode("utf-8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text_bounded(path))
    except (OSError, ValueError) as e:
        raise FerbenchError(f"{path}: unreadable JSON ({e.__class__.__name__}: {e})") from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The file's sha256; a file that cannot be read to its end is one line naming it (the kernel's
    own error, e.g. /proc/self/mem's EIO, names no file)."""
    h = hashlib.sha256()
    try:
        with open_regular(path) as f:  # a pipe would block, a device never end
            while b := f.read(chunk):
                h.update(b)
    except OSError as e:
        raise FerbenchError(f"{path}: cannot be read ({e.strerror or first_line(e)})") from None
    return h.hexdigest()
