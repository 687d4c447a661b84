"""What a disk holds after a power cut, rebuilt from the log of powercut.c.

The model is the one of SQLite's own crash tests (``test6.c`` behind
``crash.test``), at the level of system calls instead of a VFS:

* A file's data is durable up to its last ``fsync``/``fdatasync``. Writes
  after it are in the page cache only: at a cut each may have reached the
  disk, not at all, or in part. A *clean* cut drops them all (the file is
  its last synced image, the issue's wording); a *torn* cut decides per
  512-byte sector of each unsynced write whether it landed, was lost or
  landed as garbage, and whether each unsynced truncate happened. Bytes
  outside a write are never touched (SQLite's default assumption,
  SQLITE_POWERSAFE_OVERWRITE).
* A name is durable once its directory has been synced (strict POSIX: a
  new file's data may be synced and its name still lost). A clean cut keeps
  the directory as at its last sync; a torn cut keeps a random prefix of
  the creations and removals since (journalling file systems commit them in
  order).
* The ``-shm`` file is not modelled: SQLite rebuilds it from the WAL when
  the first connection opens after a crash, whatever it holds.

``DiskModel`` replays the records in order; ``image(rng)`` is the directory
a cut at that moment leaves (``rng=None``: the clean cut), ``page_cache()``
what the processes themselves saw (used to prove the log missed nothing).
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["OP_SEND", "OP_SYNC", "DiskModel", "Record", "read_log"]

MAGIC = 0x54554350
HEADER = struct.Struct("<IHHiiqqII")
OP_OPEN, OP_OPENDIR, OP_WRITE, OP_TRUNC, OP_SYNC, OP_CLOSE, OP_UNLINK, OP_SEND = range(1, 9)
SECTOR = 512
O_TRUNC = os.O_TRUNC


@dataclass(frozen=True)
class Record:
    index: int  # position in the log, in records
    offset: int  # position in the log file, in bytes
    op: int
    existed: bool
    pid: int
    fd: int
    a: int
    b: int
    payload: bytes

    @property
    def name(self) -> str:
        return os.path.basename(self.payload.decode())


def read_log(path: Path) -> list[Record]:
    data = path.read_bytes()
    records: list[Record] = []
    at = 0
    while at < len(data):
        magic, op, flags, pid, fd, a, b, plen, _tid = HEADER.unpack_from(data, at)
        assert magic == MAGIC, f"log damaged at byte {at}"
        start = at + HEADER.size
        payload = data[start : start + plen]
        assert len(payload) == plen, f"log cut short at byte {at}"
        records.append(Record(len(records), at, op, bool(flags & 1), pid, fd, a, b, payload))
        at = start + plen
    return records


Change = tuple[str, int, bytes]  # ("write", offset, bytes) or ("trunc", length, b"")


@dataclass(eq=False)
class Inode:
    disk: bytearray  # the file's content as of its last sync
    pending: list[Change] = field(default_factory=list)  # since that sync, in order


def _write(content: bytearray, offset: int, data: bytes) -> None:
    if offset > len(content):
        content.extend(bytes(offset - len(content)))
    content[offset : offset + len(data)] = data


def _apply(content: bytearray, change: Change) -> None:
    kind, at, data = change
    if kind == "write":
        _write(content, at, data)
    else:
        del content[at:]
        content.extend(bytes(max(0, at - len(content))))


def _apply_torn(content: bytearray, change: Change, rng: random.Random) -> None:
    kind, at, data = change
    if kind == "trunc":
        if rng.random() < 0.5:
            _apply(content, change)
        return
    pos = at
    while pos < at + len(data):
        end = min(at + len(data), (pos // SECTOR + 1) * SECTOR)
        chunk = data[pos - at : end - at]
        fate = rng.randrange(3)
        if fate == 0:  # reached the disk
            _write(content, pos, chunk)
        elif fate == 1:  # garbage: the sector was being written when the power went
            _write(content, pos, rng.randbytes(len(chunk)))
        # fate 2: lost; the old bytes stay
        pos = end


class DiskModel:
    """Durable and cached state of one directory's followed files."""

    def __init__(self, baseline: Mapping[str, bytes]) -> None:
        # The files before the run count as synced: they were closed and are
        # the state the service started from.
        self.durable: dict[str, Inode] = {
            name: Inode(bytearray(data)) for name, data in baseline.items()
        }
        self.visible: dict[str, Inode] = dict(self.durable)
        self.names_pending: list[tuple[str, Inode | None]] = []
        self.fds: dict[tuple[int, int], Inode | None] = {}  # (pid, fd) -> file; None: the dir
        self.syncs = 0

    def apply(self, rec: Record) -> None:
        key = (rec.pid, rec.fd)
        if rec.op == OP_OPEN:
            inode = self.visible.get(rec.name)
            if inode is None:
                assert not rec.existed, f"{rec.name} exists but the log never made it"
                inode = Inode(bytearray())
                self.visible[rec.name] = inode
                self.names_pending.append((rec.name, inode))
            if rec.a & O_TRUNC:
                inode.pending.append(("trunc", 0, b""))
            self.fds[key] = inode
        elif rec.op == OP_OPENDIR:
            self.fds[key] = None
        elif rec.op == OP_WRITE:
            self._file(key).pending.append(("write", rec.a, rec.payload))
        elif rec.op == OP_TRUNC:
            self._file(key).pending.append(("trunc", rec.a, b""))
        elif rec.op == OP_SYNC:
            self.syncs += 1
            target = self.fds[key]
            if target is None:  # the directory: its names are durable now
                self.durable = dict(self.visible)
                self.names_pending.clear()
            else:
                for change in target.pending:
                    _apply(target.disk, change)
                target.pending.clear()
        elif rec.op == OP_CLOSE:
            self.fds.pop(key, None)
        elif rec.op == OP_UNLINK:
            self.visible.pop(rec.name, None)
            self.names_pending.append((rec.name, None))
        else:
            assert rec.op == OP_SEND, rec.op

    def _file(self, key: tuple[int, int]) -> Inode:
        inode = self.fds[key]
        assert inode is not None, "a write to the directory"
        return inode

    def image(self, rng: random.Random | None) -> dict[str, bytes]:
        """The files a power cut now leaves: ``rng=None`` the clean cut (each
        file its last synced image), else a torn one drawn from ``rng``."""
        names = dict(self.durable)
        if rng is not None:
            for name, inode in self.names_pending[: rng.randint(0, len(self.names_pending))]:
                if inode is None:
                    names.pop(name, None)
                else:
                    names[name] = inode
        out: dict[str, bytes] = {}
        for name, inode in names.items():
            content = bytearray(inode.disk)
            if rng is not None:
                for change in inode.pending:
                    _apply_torn(content, change, rng)
            out[name] = bytes(content)
        return out

    def page_cache(self) -> dict[str, bytes]:
        """What the processes saw: every logged change applied, every name as left."""
        out: dict[str, bytes] = {}
        for name, inode in self.visible.items():
            content = bytearray(inode.disk)
            for change in inode.pending:
                _apply(content, change)
            out[name] = bytes(content)
        return out
