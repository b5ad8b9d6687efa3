"""Atomic writes (one file, or several files and directories as one unit), file hashing and run manifests for
every output a user keeps."""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["atomic_write", "atomic_group", "check_group", "OutputGroup", "sha256_file", "build_manifest", "write_json",
           "manifest_path", "Journal", "content_key", "redact_url", "redact_text", "redact_urls", "url_secrets"]

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


class OutputGroup:
    """The staging area of one `atomic_group` commit: write each target at `path(target)`."""

    def __init__(self, staged: dict[Path, Path]):
        self._staged = staged

    def path(self, target: str | os.PathLike) -> Path:
        """Where to write `target` (one of the group's targets) so that it is part of the commit; a target
        not written is absent after the commit."""
        key = Path(os.path.abspath(target))
        if key not in self._staged:
            raise KeyError(f"{target} is not one of this group's outputs")
        return self._staged[key]


_STORE = ".{}.itd"  # the store of a group: beside its first target


@contextlib.contextmanager
def atomic_group(targets: list[str | os.PathLike]) -> Iterator[OutputGroup]:
    """Write several outputs (files or directories) as one unit: readers of the target paths see every target
    as the previous commit left it or every one as this commit wrote it, never a mix; after a crash or `kill -9`
    at any moment too. A target the commit does not write is absent afterwards.

    Mechanism: each target path is a symbolic link into a store beside the first target,
    `.<first target name>.itd/`, whose link `current` names the committed generation, a directory holding
    every member. A commit writes the members into a fresh staging directory of the store (`path(target)`
    says where), fsyncs them, renames it to a generation and switches `current` to it with one atomic rename
    (`os.replace` of a link); the previous generation is then removed. On an exception inside the block the
    staging directory is removed and nothing changes. A target that exists as a plain file or directory (an
    output written before) is first moved into the current generation without changing what its path reads
    (a file is swapped for its link atomically; a directory is renamed away and its link put in its place, an
    instant in which the path is missing). A non-empty directory is only taken over when an itd manifest lies
    beside it, so a directory of the user's is never swallowed (`check_group` tells before the work). One commit
    at a time per store (a lock file; a second one waits, then replaces the first). Needs symbolic links (checked
    first: an InputError where the file system has none)."""
    paths, store, slots = _layout(targets)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    _check_symlinks(store.parent)
    with _store_lock(store):
        staging = store / f"s-{os.getpid()}-{time.time_ns()}"
        generation = store / ("g-" + staging.name[2:])
        try:
            for p in paths:
                _check_takeover(p, store, slots[p])
            _clean_leftovers(store, paths)
            staged = {p: staging / slots[p] / p.name for p in paths}
            for p in staged.values():
                p.parent.mkdir(parents=True, exist_ok=True)
            yield OutputGroup(staged)
            _fsync_tree(staging)
            for p in paths:
                _link_target(p, store, slots[p])
            os.rename(staging, generation)
            _fsync_dir(store)
            _point(store / "current", generation.name)  # the commit
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if generation.exists() and _current(store) != generation.name:
                shutil.rmtree(generation, ignore_errors=True)
            if _current(store) is None:  # nothing was ever committed here: leave no empty store behind
                shutil.rmtree(store, ignore_errors=True)
            raise
        for old in store.glob("g-*"):
            if old.name != generation.name:
                shutil.rmtree(old, ignore_errors=True)


def check_group(targets: list[str | os.PathLike]) -> None:
    """InputError when `atomic_group(targets)` would refuse them (paths not distinct, one inside another, a
    directory of the user's in the way): call it before the work whose outputs they are."""
    paths, store, slots = _layout(targets)
    for p in paths:
        _check_takeover(p, store, slots[p])
    if store.parent.is_dir():
        _check_symlinks(store.parent)


def _layout(targets: list[str | os.PathLike]) -> tuple[list[Path], Path, dict[Path, str]]:
    """The targets as absolute paths, their store and the slot of each in a generation; InputError for targets
    that cannot form a group."""
    from itd.core.errors import InputError

    paths = [Path(os.path.abspath(t)) for t in targets]
    if not paths or len(set(paths)) != len(paths) or any(not p.name for p in paths):
        raise InputError(f"an output group needs distinct named paths, got {[str(t) for t in targets]}")
    for a in paths:
        for b in paths:
            if a != b and a in b.parents:
                raise InputError(f"{b} would be inside the output directory {a}; choose a path outside it", path=str(b))
    store = paths[0].parent / _STORE.format(paths[0].name)
    return paths, store, {p: _slot(p.parent, paths[0].parent) for p in paths}


def _check_symlinks(folder: Path) -> None:
    """InputError where the file system of `folder` has no symbolic links (FAT, some shares, Windows without
    developer mode)."""
    from itd.core.errors import InputError

    probe = folder / f".itd-probe.{os.getpid()}.{secrets.token_hex(4)}.link"  # unique: threads share a pid
    try:
        os.symlink("current", probe)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot create symbolic links here ({exc.strerror}); they commit the outputs as one "
                         "unit: write them to a local file system", path=str(folder)) from None


def _current(store: Path) -> str | None:
    """The name of the committed generation, None before the first commit."""
    try:
        return os.readlink(store / "current")
    except OSError:
        return None


def _clean_leftovers(store: Path, targets: list[Path]) -> None:
    """What a killed commit leaves (staging, a directory set aside, temporary links); the lock says no commit is
    running, and none of it is what a target reads."""
    for pattern in ("s-*", "old-*", ".current.*.tmp"):
        for stale in store.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
    current = _current(store)
    for old in store.glob("g-*"):
        if current is not None and old.name != current:  # a generation the last commit did not get to remove
            shutil.rmtree(old, ignore_errors=True)
    for target in targets:
        for stale in target.parent.glob(glob.escape(f".{target.name}.") + "*.link"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)


def _slot(parent: Path, base: Path) -> str:
    """The folder of a generation that holds the members of `parent` (by its path relative to the store's)."""
    return hashlib.sha256(os.path.relpath(parent, base).encode("utf-8")).hexdigest()[:12]


def _link_text(target: Path, store: Path, slot: str) -> str:
    return os.path.relpath(store / "current" / slot / target.name, target.parent)


@contextlib.contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """Commits to one store one at a time (a commit takes moments: a second one waits for it)."""
    try:
        import fcntl
    except ImportError:  # no flock: commits are still atomic, only not serialised
        yield
        return
    while True:
        store.mkdir(exist_ok=True)
        f = open(store / "lock", "a")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(f.fileno()), os.stat(store / "lock")):
                break
        except FileNotFoundError:
            pass
        f.close()  # the store was removed while we waited (its first commit failed): lock the new one
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _is_ours(target: Path, store: Path, slot: str) -> bool:
    return target.is_symlink() and os.readlink(target) == _link_text(target, store, slot)


def _check_takeover(target: Path, store: Path, slot: str) -> None:
    """Refuse, before any work, to take over a directory of the user's (non-empty, no itd manifest beside it)."""
    from itd.core.errors import InputError

    if _is_ours(target, store, slot) or target.is_symlink() or not target.is_dir():
        return
    if any(target.iterdir()):
        try:
            manifest = json.loads(manifest_path(target).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        if not (isinstance(manifest, dict) and manifest.get("tool") == "itd"):
            raise InputError("the output directory exists, holds files and is no itd output (no itd manifest "
                             "beside it); remove it or choose another path", path=str(target))


def _link_target(target: Path, store: Path, slot: str) -> None:
    """Make `target` the store's link, first moving what it holds into the current generation (what the path
    reads does not change: a dangling link reads as absent, as a missing file does)."""
    if _is_ours(target, store, slot):
        return
    current = store / "current"
    if not current.is_symlink():
        first = store / f"g-{os.getpid()}-{time.time_ns()}-before"
        first.mkdir()
        _point(current, first.name)
    member = current / slot / target.name
    if target.exists():  # (a dangling link of someone else's reads as absent, and stays so)
        member.parent.mkdir(parents=True, exist_ok=True)
        if member.is_dir() and not member.is_symlink():  # a copy a killed commit left half done
            shutil.rmtree(member)
        elif member.is_symlink() or member.exists():
            os.unlink(member)
        if target.is_dir():
            shutil.copytree(target, member, symlinks=True)
            _fsync_tree(member)
        else:
            try:
                os.link(target, member, follow_symlinks=True)
            except OSError:  # another file system, or no hard links: a copy
                shutil.copy2(target, member)
            _fsync_file(member)
        _fsync_dir(member.parent)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(_link_text(target, store, slot), tmp)
    if target.is_dir() and not target.is_symlink():
        aside = store / f"old-{time.time_ns()}"
        os.rename(target, aside)
        os.replace(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)


def _point(link: Path, name: str) -> None:
    """Make `link` a symbolic link to `name`, atomically (a new link renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync_file(Path(folder, name))
        _fsync_dir(Path(folder))


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
    from itd.core.urls import HF_PREFIX, is_url, url_file_info

    files = []
    for raw in inputs:
        if isinstance(raw, str) and raw.startswith(HF_PREFIX):  # a `datasets` name: nothing to hash here
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
