"""Atomic writes: a file or folder appears under its final name only when it is complete.

Everything that matters is written this way (shards, the index, skipped.jsonl, fixed ARPAs,
checkpoints, the final model folder): a crash, a preemption or Ctrl-C leaves either the previous
version or nothing, never half a file, and no temporary behind. Temporaries sit beside their
target (same file system, so the rename is atomic) under a dot name ending in `.tmp`. Standard
library only: `w2v-fix-arpa` imports this without numpy. `locked` makes one process build a
shared cache (columns, the LM's arrays) while the others wait.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def temporary_dir_beside(path: str | os.PathLike) -> Path:
    """A new empty folder with a temporary name in the folder of `path` (made if it is missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))


class AtomicFile:
    """A file written under a temporary name and renamed onto `path` by `commit()`.

        with AtomicFile(path) as out:      # commit on success, abort on any exception
            out.write(data)

    `fsync=True` also makes the content durable before the rename (shards); a file that can be
    made again cheaply (a fixed ARPA, gigabytes at page-cache speed) may skip it.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True, buffering: int = -1):
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=TMP_SUFFIX)
        self.tmp = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # an ordinary new file's mode, not mkstemp's 0600
        self.file: BinaryIO = open(fd, "wb", buffering=buffering)  # noqa: SIM115 (closed by commit/abort)

    def commit(self) -> None:
        try:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:  # a full disk, a folder in the way: no temporary left behind
            self.abort()
            raise

    def abort(self) -> None:
        with suppress(OSError):
            self.file.close()
        with suppress(OSError):
            self.tmp.unlink()

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:  # also KeyboardInterrupt: never leave the temporary behind
            self.abort()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically (fsynced)."""
    with AtomicFile(path) as out:
        out.write(data)


def replace_path(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a finished file or folder `src` onto `dst`. A file is replaced in one rename. A folder
    in the way is renamed aside first and deleted afterwards: a crash between the two renames leaves
    the old folder under a `.NAME.*.tmp` name beside `dst` and the new one at `src`, never half of
    either."""
    src, dst = Path(src), Path(dst)
    if dst.is_dir() and not dst.is_symlink():
        old = temporary_dir_beside(dst)
        os.replace(dst, old)  # onto an empty folder, which rename allows
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name; it replaces `path` when the block succeeds."""
    tmp = temporary_dir_beside(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, path)


def cache_root() -> Path:
    """Where shared caches go when the folder they belong beside is not writable (or is a URL):
    `$W2V_CACHE_DIR`, default `~/.cache/w2v`."""
    return Path(os.environ.get("W2V_CACHE_DIR", Path.home() / ".cache" / "w2v"))


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One process at a time builds what lives in `folder` (the others wait, then find it built)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
