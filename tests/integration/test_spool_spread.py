"""The file spool's shard directories spread over the filesystem (``spool.spread``).

On ext4 without a journal, creating a file skips every inode of its block group deleted
in the last minutes, so a shard beside thousands of recently delivered bodies made each
new body cost 0.5-0.8 ms of CPU. The spool marks its root as the top of a hierarchy
before it makes its first shard, so ext4 spreads the shards over its groups.
"""

from __future__ import annotations

import array
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from postline.ids import new_id
from postline.spool.files import FileSpool
from postline.spool.spread import FS_TOPDIR_FL, spread_subdirectories

_FS_IOC_GETFLAGS = 0x80086601


def inode_flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("I", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        return int(flags[0])
    finally:
        os.close(fd)


def takes_the_flag(directory: Path) -> bool:
    probe = directory / "probe"
    probe.mkdir()
    try:
        return spread_subdirectories(str(probe))
    finally:
        probe.rmdir()


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A directory on tmpfs, which has no such flag."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as name:
        yield Path(name)


async def test_the_spool_marks_its_root_before_it_makes_its_first_shard(tmp_path: Path) -> None:
    if not takes_the_flag(tmp_path):
        pytest.skip(f"the filesystem of {tmp_path} has no FS_TOPDIR_FL (not ext2/3/4)")
    root = tmp_path / "spool"  # not there yet: the spool makes it
    spool = FileSpool(root)
    ref = new_id("em_")
    await spool.put_many([(ref, b"Subject: x\r\n\r\nbody\r\n")])
    assert inode_flags(root) & FS_TOPDIR_FL
    assert await spool.get(ref) == b"Subject: x\r\n\r\nbody\r\n"
    assert spread_subdirectories(str(root))  # marked already: nothing to change


async def test_a_spool_on_a_filesystem_without_the_flag_works_as_before(tmpfs_dir: Path) -> None:
    assert not spread_subdirectories(str(tmpfs_dir))
    spool = FileSpool(tmpfs_dir / "spool")
    refs = [new_id("em_") for _ in range(3)]
    await spool.put_many([(ref, ref.encode()) for ref in refs])
    assert [await spool.get(ref) for ref in refs] == [ref.encode() for ref in refs]


def test_a_path_that_is_no_directory_is_left_alone(tmp_path: Path) -> None:
    assert not spread_subdirectories(str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    assert not spread_subdirectories(str(tmp_path / "file"))
