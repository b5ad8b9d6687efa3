"""Where inputs live: local paths, fsspec URLs (`s3://`, `gs://`, `file://`, `memory://`) and `hf://` datasets.

The corpus readers open what these name; the manifests record what they name (a URL's files with the store's
own fingerprint, since hashing a remote corpus would read it a second time).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from itd.core.errors import InputError, require

__all__ = ["CORPUS_SUFFIXES", "HF_PREFIX", "is_url", "url_fs", "expand_url", "url_file_info"]

CORPUS_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".txt", ".txt.gz",
                   ".txt.zst", ".parquet")
HF_PREFIX = "hf://"  # hf://NAME[:split]: a Hugging Face `datasets` dataset (a hub name or a local path)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (`scheme://...`) to be read through fsspec rather than a local path."""
    return isinstance(path, str) and _URL.match(path) is not None


def url_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of `url`; a missing protocol package is an `InputError`."""
    fsspec = require("fsspec", "remote", f"Reading corpus URLs such as {url!r}")
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # e.g. "Install s3fs to access S3"
        raise InputError(f"cannot open this URL: {exc}", path=url) from None
    except ValueError as exc:  # e.g. "Protocol not known: foo"
        raise InputError(f"cannot open this URL: {exc}", path=url) from None


def expand_url(url: str) -> list[str]:
    """Files named by one fsspec URL: a file, a directory (walked for corpus files) or a glob."""
    fs, inner = url_fs(url)
    try:
        if glob.has_magic(inner):
            found = sorted(f for f in fs.glob(inner) if fs.isfile(f))
            if not found:
                raise InputError("glob matches no files", path=url)
            return [fs.unstrip_protocol(f) for f in found]
        if fs.isfile(inner):
            return [url]
        if fs.isdir(inner):
            found = sorted(f for f in fs.find(inner) if f.lower().endswith(CORPUS_SUFFIXES))
            if not found:
                raise InputError("directory holds no corpus files (" + ", ".join(CORPUS_SUFFIXES) + ")", path=url)
            return [fs.unstrip_protocol(f) for f in found]
    except OSError as exc:
        raise InputError(f"cannot list this URL: {exc}", path=url) from None
    raise InputError("no such file or directory", path=url)


def url_file_info(url: str) -> list[dict[str, Any]]:
    """Manifest entries of the files a corpus URL names: path, bytes and the store's own fingerprint of the
    content (ETag, checksum or modification time, whichever it gives), without reading the files."""
    fs, _ = url_fs(url)
    out = []
    for f in expand_url(url):
        info = fs.info(url_fs(f)[1])
        fingerprint = next((str(info[k]) for k in ("ETag", "etag", "md5Hash", "crc32c", "checksum", "mtime", "LastModified", "created") if info.get(k) is not None), None)
        out.append({"path": f, "bytes": info.get("size"), "fingerprint": fingerprint})
    return out
