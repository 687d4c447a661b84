"""The node's Ed25519 key files: each created once, mode 0600, never logged;
and the node's gateway signing key as rotations change it (``NodeKeys``)."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from shared.node_keys import key_id_for
from shared.signing import KeyPair


def create_key(path: Path) -> KeyPair:
    """Write a new key; refuses to overwrite one (a node keeps its identity)."""
    keypair = KeyPair.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never replace an enrolled identity; 0600 from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(keypair.seed).decode("ascii") + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return keypair


def load_key(path: Path) -> KeyPair:
    seed = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    return KeyPair.from_seed(seed)


GATEWAY_KEY = "gateway.key"  # the key a rotation put in the identity's place
PENDING_KEY = "gateway.key.pending"  # a new key the gateway has not acknowledged yet


@dataclass(frozen=True)
class SigningKey:
    """A key the node signs gateway requests with, and the keyId it signs as."""

    key_id: str
    keypair: KeyPair


def _sync_directory(path: Path) -> None:
    """Make a file's creation or rename in ``path`` durable (a power cut keeps it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NodeKeys:
    """The node's keys (docs/key-rotation.md).

    ``identity`` (``node.key``) is the node's identity on its office LAN: its
    fingerprint is in its adverts and pinned by its tablets, so it never
    changes. It is also the node's first gateway key (keyId: the node id).
    A rotation makes a new key in ``gateway.key.pending``, registers it with
    the gateway, and only once the gateway has acknowledged it renames it to
    ``gateway.key``, which is then the key gateway requests and new reports
    are signed with. Until then, and whatever happens to the WAN or the
    process meanwhile, the node keeps signing with the key it had.

    Every method reads the files again: a rotation made by ``edgenode
    rotate-key`` is seen by a running ``edgenode run``.
    """

    def __init__(self, directory: Path, node_id: str, identity: KeyPair) -> None:
        self.directory = directory
        self.node_id = node_id
        self.identity = identity

    def _signing_key(self, path: Path) -> SigningKey:
        keypair = load_key(path)
        return SigningKey(key_id_for(self.node_id, keypair.public_key), keypair)

    def current(self) -> SigningKey:
        path = self.directory / GATEWAY_KEY
        if path.exists():
            return self._signing_key(path)
        return SigningKey(self.node_id, self.identity)

    def pending(self) -> SigningKey | None:
        path = self.directory / PENDING_KEY
        if not path.exists():
            return None
        try:
            return self._signing_key(path)
        except (ValueError, binascii.Error):
            # Cut short while it was written (create_key syncs it before it is
            # ever sent): never seen by the gateway, so made again.
            path.unlink()
            return None

    def make_pending(self) -> SigningKey:
        """The pending key, made now if there is none (a rotation under way is
        resumed with its own key, so a resend names the same key)."""
        found = self.pending()
        if found is not None:
            return found
        # Written whole and synced under a name of its own, then linked into
        # place: a reader (edgenode status, a running node) never meets a
        # half-written pending key, which pending() would take for a torn one
        # and delete, perhaps after this process had sent it.
        path = self.directory / PENDING_KEY
        draft = self.directory / f"{PENDING_KEY}.{os.getpid()}.tmp"
        draft.unlink(missing_ok=True)
        create_key(draft)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made one first: that rotation is the one under way
        finally:
            draft.unlink()
            _sync_directory(self.directory)
        return self._signing_key(path)

    def promote(self) -> SigningKey:
        """The gateway acknowledged the pending key: it becomes the current one
        (an atomic rename; the key it replaces is not needed again)."""
        os.replace(self.directory / PENDING_KEY, self.directory / GATEWAY_KEY)
        _sync_directory(self.directory)
        return self.current()

    def discard_pending(self) -> None:
        """Forget a pending key the gateway will never take (already_exists)."""
        (self.directory / PENDING_KEY).unlink(missing_ok=True)
        _sync_directory(self.directory)
