"""The node's Ed25519 key file: created once, mode 0600, never logged."""

from __future__ import annotations

import base64
import os
from pathlib import Path

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
