"""Output paths checked before any work starts: a run must not fail after an hour on a bad --out."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import EffdnnError


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder on the way to ``path`` (``path`` itself excluded)."""
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` as a folder that exists (created) and can be written; else one line naming it."""
    path = Path(path)
    blocker = _blocking_file(path)
    if blocker is not None:
        raise EffdnnError(f"{what} {path}: {blocker} is a file, not a folder")
    if path.exists() and not path.is_dir():
        raise EffdnnError(f"{what} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".effdnn-write-check-"):
            pass
    except OSError as e:
        raise EffdnnError(f"{what} {path}: cannot write there ({e.strerror or e})") from None
    return path


def check_output_file(path: str | Path, what: str) -> Path:
    """``path`` as a file that can be written (its folder created); an existing folder is refused."""
    path = Path(path)
    if path.is_dir():
        raise EffdnnError(f"{what} {path}: is a folder, not a file")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise EffdnnError(f"{what} {path}: {blocker} is a file, not a folder")
    check_output_dir(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise EffdnnError(f"{what} {path}: cannot write there (permission denied)")
    return path
