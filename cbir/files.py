"""Safe file access for caches and bundles: regular files inside their root, bounded reads,
one writer at a time per entry, and stale temporaries of dead writers reclaimed.

A temporary file or folder is named `.<name>.<pid>-<random>.tmp` and a folder also holds
its writer's lock (`fcntl.lockf`) while it is written, so a reclaimer can tell a live
writer (lock held, or pid alive) from a killed one and never removes the former.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".writer.lock"
TEMP = re.compile(r"^\..+\.(?P<pid>\d+)-[^.]+\.(tmp|old)$")
# Temporaries named before the pid was recorded (`.<name>.<random>.tmp`): reclaimed once a day old.
LEGACY_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
LEGACY_TTL_SECONDS = 24 * 3600


def inside(path: Path, root: Path) -> Path:
    """`path` resolved (symlinks followed); ValueError when it lies outside `root`."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(root).resolve()):
        raise ValueError(f"{path}: resolves to {resolved}, outside {root}")
    return resolved


def regular_file(path: Path, root: Path, size: int | None = None) -> Path:
    """`path` once it is a regular file inside `root` (of `size` bytes when given); else ValueError."""
    resolved = inside(path, root)
    try:
        info = resolved.stat()
    except FileNotFoundError:
        raise ValueError(f"{path}: missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file")
    if size is not None and info.st_size != size:
        raise ValueError(f"{path}: {info.st_size} bytes, the manifest says {size}")
    return resolved


def read_exact(path: Path, size: int) -> bytes:
    """The file's first `size` bytes, read no further; ValueError when it holds another amount."""
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise ValueError(f"{path}: {len(data) if len(data) <= size else 'more than ' + str(size)} bytes, "
                         f"the manifest says {size}")
    return data


def temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


@contextmanager
def locked(directory: Path):
    """An exclusive `flock` on an existing folder for the block: one writer at a time, no lock file left."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold_lock(directory: Path, wait: bool = True) -> int:
    """Lock `directory` as being written by this process; returns the descriptor to close.
    Without `wait`, BlockingIOError when another process holds it. A POSIX record lock,
    so worker processes forked meanwhile (DataLoader) do not keep it after this one dies."""
    fd = os.open(Path(directory) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_locked(directory: Path) -> bool:
    """Whether another live process holds `directory`'s writer lock (never ask about this
    process's own: closing the probe would release a POSIX lock)."""
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_stale(directory: Path) -> list[Path]:
    """Remove the temporaries in `directory` whose writer is dead; returns what was removed.

    A temporary is kept while its writer's pid is alive or its lock is held (a live
    process on another host sharing the folder holds the lock); one named without a pid
    (older versions) is kept until a day old."""
    removed = []
    try:
        children = list(os.scandir(directory))
    except OSError:
        return removed
    for child in children:
        match = TEMP.match(child.name)
        if match is None:
            if not LEGACY_TEMP.match(child.name) or not _older_than(child, LEGACY_TTL_SECONDS):
                continue
        elif pid_alive(int(match["pid"])):
            continue
        path = Path(child.path)
        if child.is_dir(follow_symlinks=False):
            if is_locked(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _older_than(entry: os.DirEntry, seconds: float) -> bool:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > seconds
    except OSError:
        return False


def make_temp_dir(parent: Path, name: str) -> tuple[Path, int]:
    """A new locked temporary folder for `name` in `parent`: (its path, the lock descriptor)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(name), suffix=".tmp"))
    return tmp, hold_lock(tmp)


def default_mode(mode: int = 0o666) -> int:
    """`mode` under the process umask: what `open()` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
