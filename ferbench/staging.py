"""Page folders written whole: a report page's files go into a staging folder beside the page that
replaces it at the end, so a failure halfway (a full disk, an error while rendering) leaves the
previous page as it was. Single files are `fileio`'s (write_atomic, write_together)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ferbench.errors import FerbenchError, first_line

STAGING, REPLACED = ".staging-", ".replaced-"


@contextlib.contextmanager
def staged_folder(dest: Path) -> Iterator[Path]:
    """A folder that becomes `dest` whole when the block ends, or is dropped, leaving `dest` as it was,
    when the block fails (a full disk halfway through a page's files, an error while rendering).

    The block writes into `.<name>.staging-<pid>` beside `dest`, which starts holding hard links to
    `dest`'s files (every ferbench write replaces a file by rename, so a write in the staging folder
    never reaches the old one's bytes; a copy where links are not allowed). At the end `dest` is
    renamed aside and the staging folder renamed into its place, then the old one removed. Links
    and special files inside `dest` are not carried over. Folders left by a killed process (its pid
    gone) are removed when the next one starts."""
    import shutil

    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise FerbenchError(f"{dest}: not a folder (a link, file, pipe or device); ferbench never replaces it")
    _remove_stale(dest)
    stage = dest.parent / f".{dest.name}{STAGING}{os.getpid()}"
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        if dest.is_dir():
            _link_tree(dest, stage)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise FerbenchError(f"{dest}: cannot write ({e.strerror or first_line(e)}); the previous version, if any, is intact") from None
    try:
        yield stage
        _swap_in(stage, dest)
    except FerbenchError as e:  # named by the folder the user asked for, not the staging one
        shutil.rmtree(stage, ignore_errors=True)
        raise FerbenchError(str(e).replace(str(stage), str(dest))) from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _link_tree(src: Path, dst: Path) -> None:
    """dst mirrors src's folders and regular files (hard links, or copies where links fail)."""
    import shutil
    import stat

    for entry in os.scandir(src):
        target = dst / entry.name
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            target.mkdir()
            _link_tree(Path(entry.path), target)
        elif stat.S_ISREG(st.st_mode):
            try:
                os.link(entry.path, target, follow_symlinks=False)
            except OSError:
                shutil.copy2(entry.path, target, follow_symlinks=False)


def _swap_in(stage: Path, dest: Path) -> None:
    """Rename `stage` to `dest`, moving an existing `dest` aside first and removing it after. Retried
    when another process swaps the same folder at the same moment: each ends with a whole folder."""
    import errno
    import shutil
    import time

    for attempt in range(100):
        aside = dest.parent / f".{dest.name}{REPLACED}{os.getpid()}-{attempt}"
        try:
            if dest.exists():
                os.rename(dest, aside)
            os.rename(stage, dest)
        except OSError as e:
            if aside.exists() and not dest.exists():
                with contextlib.suppress(OSError):
                    os.rename(aside, dest)  # put the old folder back
            if e.errno in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST) and attempt < 99:
                time.sleep(0.05)
                continue
            raise FerbenchError(f"{dest}: cannot write ({e.strerror or first_line(e)}); the previous version is intact"
                                f"{f' in {aside}' if aside.exists() else ''}") from None
        finally:
            if aside.exists() and dest.exists():
                shutil.rmtree(aside, ignore_errors=True)
        return


def _remove_stale(dest: Path) -> None:
    """Remove staging and replaced folders of `dest` whose process no longer runs."""
    import glob
    import shutil

    for marker in (STAGING, REPLACED):
        for p in dest.parent.glob(f".{glob.escape(dest.name)}{marker}*"):
            pid = p.name.rsplit(marker, 1)[-1].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True
