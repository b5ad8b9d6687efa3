"""Atomic writes, file hashing and run manifests for every output a user keeps."""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any, Iterator
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["atomic_write", "sha256_file", "build_manifest", "write_json", "manifest_path", "Journal", "content_key",
           "redact_url", "redact_text", "redact_urls", "url_secrets"]

_SECRET_WORDS = ("key", "token", "secret", "password")
# query parameters that carry credentials: API keys, tokens, passwords, signed-URL signatures and credentials
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session|private", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


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


def redact_url(url: str) -> str:
    """`url` with its credentials replaced by `<redacted>`: the user:password part and the values of key-like
    query or fragment parameters (`api_key`, `key`, `token`, `sig`, `X-Amz-Credential`, ...). Other URLs and
    strings come back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "<redacted>@" + netloc.rpartition("@")[2]
    redacted = parts._replace(netloc=netloc, query=_redact_params(parts.query), fragment=_redact_params(parts.fragment))
    return url if redacted == parts else urlunsplit(redacted)


def _secret_params(params: str) -> list[str]:
    """The values of the key-like names of a `k=v&k2=v2` string."""
    found = []
    for pair in params.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and _SECRET_PARAM.search(unquote_plus(name)):
            found.append(value)
    return found


def _redact_params(params: str) -> str:
    """A `k=v&k2=v2` string with the values of key-like names replaced by `<redacted>`."""
    if "=" not in params:
        return params
    secret = set(_secret_params(params))
    return "&".join(f"{p.partition('=')[0]}=<redacted>" if p.partition("=")[2] in secret else p
                    for p in params.split("&"))


def url_secrets(url: str | None) -> list[str]:
    """The credentials inside `url` (the password, or the user name when there is none; key-like parameter
    values; raw and %-decoded, at least 4 characters), longest first: what to remove from a message that may quote a part of the URL, such as an endpoint's 404 path."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = _secret_params(parts.query) + _secret_params(parts.fragment)
    if "@" in parts.netloc:  # user:password, or a token as the user name (https://TOKEN@host)
        user, _, password = parts.netloc.rpartition("@")[0].partition(":")
        found.append(password or user)
    found += [unquote_plus(f) for f in found]
    return sorted({f for f in found if len(f) >= 4}, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the credentials of every URL in it redacted (see `redact_url`) and every string of `secrets`
    (e.g. `url_secrets` of an endpoint, an API key) replaced by `<redacted>`: for messages and logs."""
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_urls(value: Any) -> Any:
    """`value` (nested dicts, lists, strings) with the credentials of every URL in its strings redacted."""
    if isinstance(value, dict):
        return {k: redact_urls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_urls(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def _redact(value: Any) -> Any:
    """A config for a manifest: values under secret-like keys replaced, URL credentials redacted everywhere."""
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) and v else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return redact_urls(value)


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
        if isinstance(raw, str) and raw.startswith("hf://"):  # a Hugging Face dataset: named, not read again here
            files.append({"path": raw, "dataset": True})
            continue
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
        "inputs": _redact(files),
        "models": _redact(list(models)),
    }


def manifest_path(output: str | os.PathLike) -> Path:
    """Where the manifest of an output file goes: `<output>.manifest.json` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically, with the credentials of any URL in its strings redacted (it
    writes manifests, summaries and metadata, which quote configs, corpus URLs and error messages)."""
    with atomic_write(path) as f:
        json.dump(redact_urls(obj), f, indent=2, ensure_ascii=False, default=str)
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
