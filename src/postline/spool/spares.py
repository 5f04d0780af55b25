"""Spare body files: a deleted body's file kept, emptied, for a later body to reuse.

Creating a file (a new inode) is most of what spooling a body costs: on the ext4 of
the machine in docs/PERFORMANCE.md, 0.9-1.1 ms of CPU per new file, where renaming a
file costs 25 us and writing over an existing one 20 us (a loop of those os calls,
500 files each). So the file spool renames a body it deletes into ``spare/`` and
empties it instead of unlinking it, and a new body takes a spare by renaming it to
its temporary name. A rename is atomic: two processes sharing the spool never take
the same spare (the loser goes on to the next). There are never more spares than
bodies the spool once held at one time, and a spare holds no content.

Why a new file cost so much there: that ext4 has no journal, and then it skips every
recently deleted inode of the block group when it allocates one (``spool.spread``,
which spreads the shards over the groups, cut it to 0.03 ms).
"""

from __future__ import annotations

import os

#: The spares' directory under the spool's root. Its files have no ``.eml`` or ``.tmp``
#: suffix, so the orphan scan (``*/*.eml``, ``*/*.tmp``) never takes them for bodies.
SPARE_DIR = "spare"
_EMPTY = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
#: Names read from the directory at a time, when those read before are used up.
_READ_AT_ONCE = 2048


class Spares:
    def __init__(self, root: str) -> None:
        self.directory = f"{root}/{SPARE_DIR}"
        self._names: list[str] = []

    def keep(self, name: str) -> bool:
        """Empty the body file ``name`` and move it to the spares; True when ``name`` is
        gone (moved, or there was none), False when the caller must unlink it.

        Emptied first, so a delivered body's content is not kept; and only a regular
        file: a directory, a symbolic link or a FIFO standing where a body should be is
        refused by the open (``O_NOFOLLOW``, ``O_NONBLOCK``) and left to the caller.
        """
        try:
            os.close(os.open(name, _EMPTY))
        except FileNotFoundError:
            return True
        except OSError:
            return False
        spare = f"{self.directory}/{os.path.basename(name).removesuffix('.eml')}"
        try:
            os.rename(name, spare)
        except FileNotFoundError:
            try:  # the first spare: no directory yet
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                os.rename(name, spare)
            except OSError:
                return False
        except OSError:
            return False
        return True

    def take(self, target: str) -> bool:
        """Rename a spare to ``target`` (in an existing directory); False if none is left."""
        read = False
        while True:
            if not self._names:
                if read:
                    return False
                self._names, read = self._read(), True
                continue
            spare = f"{self.directory}/{self._names.pop()}"
            try:
                os.rename(spare, target)
                return True
            except FileNotFoundError:
                if os.path.exists(spare):
                    return False  # it is ``target``'s directory that is missing
                continue  # another process took it first
            except OSError:
                return False

    def _read(self) -> list[str]:
        names: list[str] = []
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    names.append(entry.name)
                    if len(names) >= _READ_AT_ONCE:
                        break
        except FileNotFoundError:
            pass
        return names
