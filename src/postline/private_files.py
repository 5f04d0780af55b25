"""The data directory is for this user alone: directories 0700, files 0600.

It holds every email, the API key shown once, the secret key and the sealed
secrets; a 0644 database in a 0755 directory lets any local account read them.
What Postline creates gets its mode at creation (``os.open``/``mkdir`` with the
mode, so a loose umask cannot widen it; a tighter one only narrows it). What it
finds wider, from an older version or an operator's copy, it reports at start,
one log line per path, and leaves alone: the operator may have opened it on
purpose (a backup user's group), and a service that changes modes behind its
operator's back breaks that silently.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
#: Spool entries walked at start; past this a big old spool is reported by its sample.
_SPOOL_SAMPLE = 10_000


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with the directory itself 0700."""
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def write_once(path: Path, text: str) -> str:
    """Write ``text`` to a new 0600 file at ``path`` atomically, unless a file is
    already there; return what the file holds either way.

    Two processes starting at once on one data dir (``api`` and ``worker``) must
    agree on one content: the text goes to a private temporary file first and is
    hard-linked into place, which fails for the second one, who reads the first's.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text()


def too_open(path: Path) -> str | None:
    """A one-line warning when ``path`` lets group or others in, else None."""
    try:
        info = path.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return None
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return None
    wanted = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
    return (
        f"{path} is mode {mode:04o}: other users can reach what it holds; "
        f"run chmod {wanted:o} {path}"
    )


def _spool_entries(root: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for shard in os.scandir(root):
            yield Path(shard.path)
            if shard.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    for entry in os.scandir(shard.path):
                        yield Path(entry.path)


def permission_warnings(data_dir: Path, extra: Iterable[Path], spool: Path | None) -> list[str]:
    """What is wider than 0700/0600: the data dir, each entry in it, ``extra`` paths
    kept elsewhere (a SQLite database outside it, with its -wal and -shm), and the
    file spool, summed up in one line however many bodies it holds."""
    paths: list[Path] = [data_dir]
    with contextlib.suppress(OSError):
        paths.extend(sorted(data_dir.iterdir()))
    paths.extend(p for p in extra if p not in paths)
    if spool is not None and spool not in paths:
        paths.append(spool)
    warnings = [line for line in map(too_open, paths) if line]
    if spool is None:
        return warnings
    open_entries = [p for p in islice(_spool_entries(spool), _SPOOL_SAMPLE) if too_open(p)]
    if open_entries:
        warnings.append(
            f"{len(open_entries)} entries under the spool {spool} are readable by other "
            f"users (first: {open_entries[0]}); run chmod -R go-rwx {spool}"
        )
    return warnings
