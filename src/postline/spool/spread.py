"""Spread the spool's shard directories over the filesystem (ext4's Orlov hint).

ext4 puts a new directory beside its parent, and a new file in its directory's block
group. Without a journal (the machine in docs/PERFORMANCE.md has none), ext4 skips
every inode of that group deleted in the last one to five minutes when it allocates
one, reading each skipped inode's dtime: after a run of deliveries, creating a body's
file cost 0.5-0.8 ms of CPU there, against 0.03 ms with the shards spread
(docs/PERFORMANCE.md, "Stop 40"). A directory marked as the top of a hierarchy
(``chattr +T``, ``FS_TOPDIR_FL``) has its subdirectories spread over the groups like
top-level ones, so each shard's files are created, and deleted, in a group of their own.

Only a hint: a filesystem without the flag (tmpfs, XFS, Btrfs, any other OS) refuses
or ignores it, and the spool works as before.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os

log = logging.getLogger("postline.spool")

#: From <linux/fs.h>: the inode flags' ioctls and the Orlov flag. The ioctls are declared
#: with a long, but the kernel reads and writes an unsigned int (as chattr passes).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: str) -> bool:
    """Mark ``path`` as the top of a hierarchy; True when it is (or already was) marked.

    Directories created under it afterwards are spread; those already there stay where
    they are.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = array.array("I", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & FS_TOPDIR_FL:
            flags[0] |= FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError as exc:  # ENOTTY, EOPNOTSUPP, EINVAL, EPERM: not this filesystem's
        log.debug("spool shards not spread over the filesystem: %s", exc.strerror)
        return False
    finally:
        os.close(fd)
