"""Atomic writes, file hashing and run manifests for every output a user keeps."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_write", "sha256_file", "build_manifest", "write_json", "manifest_path"]

_SECRET_WORDS = ("key", "token", "secret", "password")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None) -> Iterator[Any]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; an output gets the usual mode
        if "b" in mode:
            f = os.fdopen(fd, mode)
        else:
            f = os.fdopen(fd, mode, encoding=encoding, newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) and v else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return value


def build_manifest(
    *, command: str, config: dict[str, Any], inputs: list[str | os.PathLike] = (), models: list[str] = ()
) -> dict[str, Any]:
    """A manifest: tool version, command, config (secrets redacted), input file hashes, model names."""
    from itd import __version__

    files = []
    for p in inputs:
        p = Path(p)
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                files.append({"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    return {
        "tool": "itd",
        "version": __version__,
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "config": _redact(config),
        "inputs": files,
        "models": list(models),
    }


def manifest_path(output: str | os.PathLike) -> Path:
    """Where the manifest of an output file goes: `<output>.manifest.json` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
