"""Atomic writes, file hashing and run manifests for every output a user keeps."""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterator

__all__ = ["atomic_write", "sha256_file", "build_manifest", "write_json", "manifest_path", "Journal", "content_key"]

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
    """A manifest: tool version, command, config (secrets redacted), input files, model names. Local files
    (directories walked, globs expanded) are recorded with their SHA-256; corpus URLs with the size and the
    fingerprint their store gives (ETag, checksum), since hashing a remote corpus would read it a second time."""
    from itd import __version__
    from itd.corpus import is_url, url_file_info

    files = []
    for raw in inputs:
        if is_url(raw):
            files.extend(url_file_info(str(raw)))
            continue
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.rglob("*"))
        else:
            found = [p] if p.exists() else sorted(map(Path, glob.glob(str(p), recursive=True)))
        for f in found:
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


def content_key(*parts: Any) -> str:
    """Hex SHA-256 of `parts` as canonical JSON: the key of a piece of work that depends on exactly these."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Journal:
    """An append-only JSONL record of finished work, keyed by string, that survives `kill -9`.

    Every `put_many` appends its records, flushes and fsyncs before returning, so what it recorded is on disk.
    A process killed mid-write leaves at most one torn last line, which loading skips (and the next append
    starts on a fresh line). A later put of a key wins. Used so that a resumed run repeats no finished model call.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._data: dict[str, Any] = {}
        self._torn = False
        if self.path.exists():
            with open(self.path, "rb") as f:
                raw = f.read()
            self._torn = bool(raw) and not raw.endswith(b"\n")
            for line in raw.splitlines():
                try:
                    rec = json.loads(line)
                    self._data[rec["k"]] = rec["v"]
                except (ValueError, KeyError, TypeError):
                    continue  # the torn line of an interrupted append

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        """The value recorded under `key`, or `default`."""
        return self._data.get(key, default)

    def put_many(self, items: Mapping[str, Any]) -> None:
        """Record `items` (key -> JSON-serialisable value) durably."""
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"k": k, "v": v}, ensure_ascii=False) + "\n" for k, v in items.items())
        with open(self.path, "a", encoding="utf-8") as f:
            if self._torn:
                f.write("\n")
                self._torn = False
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self._data.update(items)
