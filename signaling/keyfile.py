"""Secrets kept in the data directory (mode 0600) when not given, so that an API key, the
join-token signing key and the TURN secret survive a restart (join URLs keep working)."""

from __future__ import annotations

import os
from pathlib import Path

API_KEY_FILE = "api-key"
TOKEN_SECRET_FILE = "token-secret"
TURN_SECRET_FILE = "turn-secret"
WEBHOOK_SECRET_FILE = "webhook-secret"


def load_or_create(directory: str | os.PathLike[str], name: str, make: str) -> tuple[str, bool]:
    """The secret in ``directory/name``; when missing, ``make`` is written there first.
    Returns the secret and whether it was created now. Runs at start-up, before the loop."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ValueError(
                f"{path} is readable by others (mode {mode:o}): chmod 600 it"
            ) from None
        value = path.read_text().strip()
        if not value:
            raise ValueError(f"{path} is empty: remove it to generate a new secret") from None
        return value, False
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
    return make, True
