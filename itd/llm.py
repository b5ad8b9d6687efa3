"""An OpenAI-compatible client for JSON and plain-text replies, with an on-disk content-addressed cache.

`LLMClient.complete_json` sends a batch of chat requests concurrently (at most `LLMConfig.concurrency` in
flight), parses each reply into a pydantic schema and returns one `LLMReply` per request, in input order. A
failed item (bad JSON, schema violation, HTTP error after retries, timeout) is a reply with `error` set, never an
exception, so one bad item cannot stop a batch. Losing the endpoint is not an item's failure: a connection error
that outlasts the retries cancels the batch and raises `itd.core.errors.EndpointError` (the replies that arrived are
in the cache), so a dead endpoint never turns into a run of failed items. `check_endpoint` tells, before any
work, whether an endpoint answers at all. `LLMClient.complete_text` does the same for plain-text prompts
(`TextRequest`), over the chat API (the prompt is one user message) or the completions API (`LLMConfig.api`);
its replies carry the raw text, for an evaluator to parse.

Every reply the endpoint returns is written to the cache (`cache_dir/<key[:2]>/<key>.json`) as soon as it
arrives, so an interrupted run loses only the calls in flight and a re-run repeats no finished call. The key is
the SHA-256 of what determines the reply: model, messages, temperature, seed, max_tokens, response format and the
schema (text requests: the API, prompt, stop sequences and max_tokens instead of the last two); never the
endpoint URL nor the API key. The key itself is resolved from the environment when the client
is made and is kept out of the config, the replies, the cache and every error message.

A reply is data: its text is only ever parsed (into the schema, or by an evaluator's answer extraction).

Over 600 lines because the client is one unit: requests, the schema check, retries, the reply cache and the
key handling each depend on the others' invariants (a cached reply is never re-sent, a key never leaves).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from itd.core.errors import EndpointError, InputError, require
from itd.core.io import atomic_write, redact_text, url_secrets
from itd.core.progress import CountingProgress
from itd.core.validate import is_number

__all__ = [
    "LLMConfig",
    "LLMRequest",
    "TextRequest",
    "LLMReply",
    "LLMClient",
    "Progress",
    "RESPONSE_FORMATS",
    "APIS",
    "cache_key",
    "text_cache_key",
    "default_cache_dir",
    "check_endpoint",
    "redact_url",
    "DEFAULT_BASE_URL",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""Where the openai SDK sends requests when no base URL is given."""

RESPONSE_FORMATS = ("json_schema", "json_object", "none")
APIS = ("chat", "completions")

Progress = CountingProgress
"""Called as `progress(done, total, stats)` after each reply; stats counts calls, cache_hits, failures,
prompt_tokens and completion_tokens of this batch (`itd.core.progress.CountingProgress`)."""

_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """Where LLM replies are cached unless told otherwise: `$ITD_CACHE_DIR`, else `$XDG_CACHE_HOME/itd/llm`,
    else `~/.cache/itd/llm`."""
    if os.environ.get("ITD_CACHE_DIR"):
        return Path(os.environ["ITD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "itd" / "llm"


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """Settings of the LLM client.

    `model`: model name sent to the endpoint. `base_url`: an OpenAI-compatible endpoint (".../v1"); None means
    the SDK default (OpenAI). `api_key_env`: environment variables tried in order for the API key (the first set
    wins); a key is required unless `base_url` is given (a local endpoint may need none). `concurrency`: requests
    in flight at once. `timeout`: seconds per HTTP attempt. `max_retries`: retries the SDK makes on 408, 409,
    429, 5xx, timeouts and connection errors. `temperature`, `seed`, `max_tokens`: sampling settings (the seed
    is the default of requests that give none). `response_format`: "json_schema" (the schema is sent, not
    strict), "json_object", or "none" (nothing sent; the prompt must ask for JSON). `cache_dir`: reply cache
    directory, None for no cache. `api`: the endpoint API `complete_text` uses, "chat" (`/chat/completions`,
    the prompt as one user message) or "completions" (`/completions`, the raw prompt); `complete_json` always
    uses the chat API.
    """

    model: str
    base_url: str | None = None
    api_key_env: tuple[str, ...] = ("ITD_API_KEY", "OPENAI_API_KEY")
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 5
    temperature: float = 0.7
    seed: int = 0
    max_tokens: int | None = None
    response_format: str = "json_object"
    cache_dir: str | None = None
    api: str = "chat"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError("an LLM model name is needed (e.g. --model gpt-4o-mini)")
        object.__setattr__(self, "model", self.model.strip())
        if self.base_url is not None:
            url = str(self.base_url).strip().rstrip("/")
            if not re.match(r"^https?://[^/\s]+", url):
                raise InputError(f"the LLM base URL must start with http:// or https://, got {redact_text(str(self.base_url))!r}")
            object.__setattr__(self, "base_url", url)
        names = (self.api_key_env,) if isinstance(self.api_key_env, str) else tuple(self.api_key_env)
        names = tuple(n.strip() for n in names if isinstance(n, str) and n.strip())
        if not names:
            raise InputError("api_key_env needs at least one environment variable name")
        object.__setattr__(self, "api_key_env", names)
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise InputError(f"LLM concurrency must be an integer >= 1, got {self.concurrency!r}")
        if not is_number(self.timeout) or not math.isfinite(self.timeout) or self.timeout <= 0:
            raise InputError(f"LLM timeout must be a positive number of seconds, got {self.timeout!r}")
        object.__setattr__(self, "timeout", float(self.timeout))
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise InputError(f"LLM max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not is_number(self.temperature) or not 0 <= self.temperature <= 2:
            raise InputError(f"LLM temperature must be in [0, 2], got {self.temperature!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"LLM seed must be an integer, got {self.seed!r}")
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise InputError(f"LLM max_tokens must be an integer >= 1 or None, got {self.max_tokens!r}")
        if self.response_format not in RESPONSE_FORMATS:
            raise InputError(
                f"unknown response format {self.response_format!r}; choose one of {', '.join(RESPONSE_FORMATS)}"
            )
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if self.api not in APIS:
            raise InputError(f"unknown LLM API {self.api!r}; choose one of {', '.join(APIS)}")

    def resolve_api_key(self) -> str:
        """The API key from the first set variable of `api_key_env`; "none" for a `base_url` that needs none.

        Raises InputError when no variable is set and no `base_url` is given."""
        for name in self.api_key_env:
            value = os.environ.get(name, "").strip()
            if value:
                return value
        if self.base_url is not None:
            return "none"
        raise InputError(
            f"no API key: set {' or '.join(self.api_key_env)} (or give a base URL of a local endpoint that needs none)"
        )

    def __repr__(self) -> str:  # the endpoint URL's credentials stay out of logs and messages
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return redact_text(f"{type(self).__name__}({values})", url_secrets(self.base_url))

    def to_dict(self) -> dict[str, Any]:
        """The config for a manifest: the names of the key variables, never the key."""
        d = asdict(self)
        d["api_key_env"] = list(self.api_key_env)
        return d


@dataclass(slots=True)
class LLMRequest:
    """One chat request: OpenAI-style `messages` and the sampling `seed` (None: the config's seed).

    A retry of the same item should pass a different seed, so it gets a different cache key and a fresh reply."""

    messages: list[dict[str, Any]]
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.messages, (list, tuple)) or not self.messages:
            raise InputError("an LLM request needs a non-empty list of messages")
        for m in self.messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise InputError(f"each LLM message must be a dict with 'role' and 'content', got {m!r:.200}")
        self.messages = [dict(m) for m in self.messages]
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InputError(f"LLM request seed must be an integer or None, got {self.seed!r}")


@dataclass(slots=True)
class TextRequest:
    """One plain-text request: the `prompt`, `stop` sequences (sent to the endpoint, at most 4 as OpenAI allows;
    the endpoint ends the reply before the first one), the sampling `seed` (None: the config's seed) and
    `max_tokens` (None: the config's)."""

    prompt: str
    stop: tuple[str, ...] = ()
    seed: int | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt:
            raise InputError("a text request needs a non-empty prompt string")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(x, str) and x for x in stop):
            raise InputError(f"stop sequences must be non-empty strings, got {self.stop!r:.200}")
        if len(stop) > 4:
            raise InputError(f"at most 4 stop sequences can be sent to an OpenAI-compatible endpoint, got {len(stop)}")
        self.stop = stop
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InputError(f"LLM request seed must be an integer or None, got {self.seed!r}")
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise InputError(f"max_tokens must be an integer >= 1 or None, got {self.max_tokens!r}")


@dataclass(slots=True)
class LLMReply:
    """The outcome of one request.

    `key`: cache key. `text`: the raw reply content (kept also when it fails validation). `value`: the reply
    parsed into the schema, or None. `error`: why the item failed (invalid JSON, schema violation, HTTP status
    after retries, timeout), or None. `cached`: served from the cache. `usage`: prompt/completion tokens when the
    endpoint gave them. `seconds`: time this reply took in this run. `seed`: the sampling seed used.
    """

    key: str
    text: str | None
    value: Any = None  # text requests: the reply text itself
    error: str | None = None
    cached: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.value is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record for a per-item log (the parsed value as a plain dict)."""
        value = self.value.model_dump(mode="json") if hasattr(self.value, "model_dump") else self.value
        return {
            "key": self.key,
            "text": self.text,
            "value": value,
            "error": self.error,
            "cached": self.cached,
            "usage": dict(self.usage),
            "seconds": round(self.seconds, 4),
            "seed": self.seed,
        }


def cache_key(config: LLMConfig, messages: Sequence[dict[str, Any]], seed: int, schema: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of what determines a reply; the endpoint URL and key are not in it."""
    return _hash_payload({
        "v": _CACHE_VERSION,
        "model": config.model,
        "messages": list(messages),
        "temperature": config.temperature,
        "seed": seed,
        "max_tokens": config.max_tokens,
        "response_format": config.response_format,
        "schema": schema.model_json_schema(),
    })


def text_cache_key(config: LLMConfig, request: TextRequest, seed: int) -> str:
    """The cache key of a plain-text request: SHA-256 of the API, model, prompt, temperature, seed, max_tokens
    and stop sequences (never the endpoint URL nor the key); disjoint from every `cache_key`."""
    return _hash_payload({
        "v": _CACHE_VERSION,
        "kind": "text",
        "api": config.api,
        "model": config.model,
        "prompt": request.prompt,
        "temperature": config.temperature,
        "seed": seed,
        "max_tokens": request.max_tokens if request.max_tokens is not None else config.max_tokens,
        "stop": list(request.stop),
    })


def _hash_payload(payload: dict[str, Any]) -> str:
    try:
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"LLM request messages must be plain JSON data: {exc}") from None
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def redact_url(url: str | None) -> str:
    """`url` fit to show: user and password replaced by `<redacted>`, and so are the values of query parameters
    named like a secret (key, token, secret, password, signature); None is the SDK default endpoint."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if url is None:
        return DEFAULT_BASE_URL
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None or parts.password is not None:
        netloc = "<redacted>@" + netloc
    query = urlencode([(k, "<redacted>" if re.search(r"key|token|secret|passw|sig|auth", k, re.I) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="<>")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_endpoint(config: LLMConfig, *, timeout: float = 5.0, purpose: str = "The LLM client") -> None:
    """Raise `EndpointError` ("cannot connect to <URL>") unless the endpoint of `config` answers; call it before
    the work that needs the endpoint starts, so a dead endpoint stops the run at once (exit 2) instead of after
    minutes of retries.

    One `GET <base_url>/models` with no retries and `timeout` seconds (at most the config's): any HTTP answer
    means the endpoint is there (a server without that route answers 404), except 401/403, which say the API
    key is refused. The URL in messages has its credentials removed (`redact_url`); the key never appears."""
    openai = require("openai", "llm", purpose)
    key = config.resolve_api_key()
    where = redact_url(config.base_url)
    client = openai.OpenAI(api_key=key, base_url=config.base_url, timeout=min(timeout, config.timeout), max_retries=0)
    try:
        client.models.list()
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403):
            raise EndpointError(f"the endpoint {where} refused the API key (HTTP {exc.status_code}); set "
                                f"{' or '.join(config.api_key_env)}", where) from None
    except openai.APITimeoutError:
        raise EndpointError(f"cannot connect to {where}: no answer within {min(timeout, config.timeout):g} s",
                            where) from None
    except openai.APIConnectionError as exc:
        raise EndpointError(f"cannot connect to {where}: {_connection_cause(exc, config, key)}", where) from None
    except openai.OpenAIError:
        pass  # an answer the SDK cannot read: the endpoint is there
    finally:
        client.close()


def _connection_cause(exc: BaseException, config: LLMConfig, key: str) -> str:
    """Why a connection failed, in one line, without the key or the URL's credentials."""
    cause = exc.__cause__ or exc
    text = f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    if config.base_url:
        text = text.replace(config.base_url, redact_url(config.base_url))
    if key and key != "none" and len(key) >= 4:
        text = text.replace(key, "<redacted>")
    return text[:300]


class LLMClient:
    """Sends batches of JSON-reply chat requests (or plain-text requests) to an OpenAI-compatible endpoint,
    through the cache.

    Making a client checks that `openai` is installed and resolves the API key; no connection is made until
    `complete_json` or `complete_text` has a cache miss. A client can be used for any number of batches."""

    def __init__(self, config: LLMConfig, *, purpose: str = "The LLM rewriter"):
        self._openai = require("openai", "llm", purpose)
        self.config = config
        self._api_key = config.resolve_api_key()
        self.last_stats: dict[str, int] = _new_stats()

    def __repr__(self) -> str:
        return f"LLMClient({self.config!r})"

    def cache_path(self, key: str) -> Path | None:
        """Where the cache entry of `key` lives, or None without a cache."""
        if self.config.cache_dir is None:
            return None
        return Path(self.config.cache_dir) / key[:2] / f"{key}.json"

    def complete_json(
        self, requests: Sequence[LLMRequest], schema: Any, progress: Progress | None = None
    ) -> list[LLMReply]:
        """One reply per request, in input order, each parsed into `schema` (a pydantic BaseModel subclass).

        Cache hits make no HTTP call; identical requests in one batch are sent once. Failures are replies with
        `error` set. `progress(done, total, stats)` is called after each reply; the final stats are kept in
        `last_stats`."""
        _check_schema(schema)
        reqs = [r if isinstance(r, LLMRequest) else LLMRequest(**r) for r in requests]
        cfg = self.config
        seeds = [cfg.seed if r.seed is None else r.seed for r in reqs]
        keys = [cache_key(cfg, r.messages, seed, schema) for r, seed in zip(reqs, seeds)]

        def parse(key: str, text: str | None, seed: int, cached: bool) -> LLMReply:
            return _reply_from_text(key, text, schema, seed, cached=cached)

        def send(client: Any, i: int) -> Any:
            return client.chat.completions.create(**self._json_kwargs(reqs[i].messages, seeds[i], schema))

        return self._run_sync(self._run(keys, seeds, send, _chat_parts, parse, progress))

    def complete_text(self, requests: Sequence[TextRequest | str], progress: Progress | None = None) -> list[LLMReply]:
        """One reply per plain-text request (a `TextRequest` or a prompt string), in input order, over the API
        of `config.api`; a reply's `text` (and `value`) is the raw reply text, `error` is set only when there is
        no text (an HTTP error after retries, a timeout, an empty reply). The cache, concurrency, retries and
        progress work as in `complete_json`; `config.response_format` is not sent."""
        reqs = [r if isinstance(r, TextRequest) else TextRequest(r) for r in requests]
        cfg = self.config
        seeds = [cfg.seed if r.seed is None else r.seed for r in reqs]
        keys = [text_cache_key(cfg, r, seed) for r, seed in zip(reqs, seeds)]

        def send(client: Any, i: int) -> Any:
            r = reqs[i]
            kwargs: dict[str, Any] = {"model": cfg.model, "temperature": cfg.temperature, "seed": seeds[i]}
            max_tokens = r.max_tokens if r.max_tokens is not None else cfg.max_tokens
            if max_tokens is not None:
                kwargs["max_tokens"] = max_tokens
            if r.stop:
                kwargs["stop"] = list(r.stop)
            if cfg.api == "completions":
                return client.completions.create(prompt=r.prompt, **kwargs)
            return client.chat.completions.create(messages=[{"role": "user", "content": r.prompt}], **kwargs)

        extract = _text_completion_parts if cfg.api == "completions" else _chat_parts
        return self._run_sync(self._run(keys, seeds, send, extract, _text_reply, progress))

    def _run_sync(self, coro: Any) -> list[LLMReply]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from inside a running event loop (a notebook): run the batch on a loop of its own thread.
        out: list[Any] = []

        def target() -> None:
            try:
                out.append(asyncio.run(coro))
            except BaseException as exc:  # re-raised in the caller's thread
                out.append(exc)

        t = threading.Thread(target=target, name="itd-llm")
        t.start()
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    # -- internals -------------------------------------------------------------------------------------------

    async def _run(
        self,
        keys: list[str],
        seeds: list[int],
        send: Callable[[Any, int], Any],
        extract: Callable[[Any], tuple[str | None, dict[str, int], str | None]],
        parse: Callable[[str, str | None, int, bool], LLMReply],
        progress: Progress | None,
    ) -> list[LLMReply]:
        """Serve each request (index i, cache key keys[i]) from the cache or by `send(client, i)`; `extract` takes
        the text, usage and finish reason out of a response and `parse` makes the reply of a text."""
        cfg = self.config
        total = len(keys)
        stats = self.last_stats = _new_stats()
        results: list[LLMReply | None] = [None] * total
        done = 0

        def report(indices: list[int], reply: LLMReply) -> None:
            nonlocal done
            for n, i in enumerate(indices):
                results[i] = reply if n == 0 else _copy_reply(reply)
                done += 1
                if reply.cached or n > 0:
                    stats["cache_hits"] += 1
                if reply.error is not None:
                    stats["failures"] += 1
                if progress:
                    progress(done, total, dict(stats))

        # Group identical requests, then serve what the cache has before any connection is made.
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        misses: list[str] = []
        for key, indices in groups.items():
            t0 = time.perf_counter()
            entry = self._cache_read(key)
            if entry is None:
                misses.append(key)
                continue
            reply = parse(key, entry["text"], seeds[indices[0]], True)
            reply.usage = _clean_usage(entry.get("usage"))
            reply.seconds = time.perf_counter() - t0
            report(indices, reply)
        if not misses:
            return results  # type: ignore[return-value]

        # The SDK client is made inside the running loop and closed before it ends, so the LLMClient can run
        # any number of batches, each under its own asyncio.run.
        sem = asyncio.Semaphore(cfg.concurrency)
        client = self._openai.AsyncOpenAI(
            api_key=self._api_key, base_url=cfg.base_url, timeout=cfg.timeout, max_retries=cfg.max_retries
        )

        async def one(key: str) -> None:
            indices = groups[key]
            async with sem:
                stats["calls"] += 1
                i = indices[0]
                reply = await self._call(client, key, seeds[i], lambda: send(client, i), extract, parse)
            stats["prompt_tokens"] += reply.usage.get("prompt_tokens", 0)
            stats["completion_tokens"] += reply.usage.get("completion_tokens", 0)
            report(indices, reply)

        tasks = [asyncio.ensure_future(one(k)) for k in misses]
        try:
            await asyncio.gather(*tasks)
        except EndpointError as exc:
            # the endpoint is gone: stop the requests still waiting instead of retrying each of them
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            where = f" in the reply cache ({cfg.cache_dir})" if cfg.cache_dir else " (no reply cache: they are lost)"
            raise EndpointError(f"{exc.message}; {done} of {total} replies of this batch arrived{where}; run again "
                                "to continue from them", exc.url) from None
        finally:
            for t in tasks:
                t.cancel()
            await client.close()
        return results  # type: ignore[return-value]

    def _json_kwargs(self, messages: list[dict], seed: int, schema: Any) -> dict[str, Any]:
        """The arguments of one JSON-reply chat request."""
        cfg = self.config
        kwargs: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "seed": seed,
        }
        if cfg.max_tokens is not None:
            kwargs["max_tokens"] = cfg.max_tokens
        if cfg.response_format == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(schema),
                    "schema": schema.model_json_schema(),
                    "strict": False,
                },
            }
        elif cfg.response_format == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    async def _call(
        self,
        client: Any,
        key: str,
        seed: int,
        create: Callable[[], Any],
        extract: Callable[[Any], tuple[str | None, dict[str, int], str | None]],
        parse: Callable[[str, str | None, int, bool], LLMReply],
    ) -> LLMReply:
        """One request through the SDK (`create()` makes the SDK call's coroutine); `EndpointError` when the
        connection fails after the retries (the endpoint is gone: a matter of the run, not of this item). Retries
        are the SDK's own:
        `AsyncOpenAI(max_retries=...)` retries timeouts, connection errors and responses with status 408, 409,
        429 or >= 500 (unless the server sends `x-should-retry: false`) with exponential backoff from 0.5 s to
        8 s with jitter, and honours `retry-after-ms` / `retry-after` up to 120 s (openai `_base_client.py`:
        `_should_retry`, `_calculate_retry_timeout`). There is no retry loop here."""
        cfg = self.config
        openai = self._openai
        t0 = time.perf_counter()
        error: str | None = None
        try:
            completion = await create()
        except openai.APITimeoutError:
            error = f"timeout ({cfg.timeout:g}s per attempt, {cfg.max_retries} retries)"
        except openai.APIStatusError as exc:
            status = exc.status_code
            retried = _sdk_retries(exc.response)
            error = f"HTTP {status}" + (f" after {cfg.max_retries} retries" if retried and cfg.max_retries else "")
            detail = _status_detail(exc)
            if detail:
                error += f": {detail}"
        except openai.APIConnectionError as exc:
            where = redact_url(cfg.base_url)
            raise EndpointError(f"lost the LLM endpoint {where}: connection error after {cfg.max_retries} retries: "
                                f"{_connection_cause(exc, cfg, self._api_key)}", where) from None
        except openai.OpenAIError as exc:  # e.g. a 200 whose body is no chat completion
            error = f"bad response from the endpoint: {type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        if error is not None:  # a transport failure: not cached, a re-run tries again
            return LLMReply(key=key, text=None, error=self._redact(error)[:500], seconds=seconds, seed=seed)

        text, usage, finish = extract(completion)
        self._cache_write(key, text, usage, finish, seconds, seed)
        reply = parse(key, text, seed, False)
        reply.usage = usage
        reply.seconds = seconds
        return reply

    def _redact(self, message: str) -> str:
        """`message` without the API key, the credentials of the endpoint URL (an error may quote a part of it,
        such as the path and query of a 404) or of any URL in it."""
        key = self._api_key
        secrets = [key] if key and key != "none" and len(key) >= 4 else []
        return redact_text(message, [*secrets, *url_secrets(self.config.base_url)])

    def _cache_read(self, key: str) -> dict[str, Any] | None:
        """The cache entry of `key`, or None when absent, unreadable, truncated or not an entry of this key."""
        path = self.cache_path(key)
        if path is None:
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (
            not isinstance(entry, dict)
            or entry.get("key") != key
            or entry.get("version") != _CACHE_VERSION
            or not (entry.get("text") is None or isinstance(entry.get("text"), str))
        ):
            return None
        return entry

    def _cache_write(self, key: str, text: str | None, usage: dict, finish: str | None, seconds: float, seed: int):
        path = self.cache_path(key)
        if path is None:
            return
        entry = {
            "version": _CACHE_VERSION,
            "key": key,
            "model": self.config.model,
            "seed": seed,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 4),
            "finish_reason": finish,
            "usage": usage,
            "text": text,
        }
        try:
            with atomic_write(path) as f:
                json.dump(entry, f, ensure_ascii=False)
        except OSError as exc:
            raise InputError(f"cannot write the LLM cache: {exc}", path=str(path)) from None


# -- helpers -----------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?```$", re.DOTALL)


def _reply_from_text(key: str, text: str | None, schema: Any, seed: int, *, cached: bool) -> LLMReply:
    """Parse a raw reply into the schema; a reply that does not fit is a failed reply keeping the raw text."""
    value, error = _parse(text, schema)
    return LLMReply(key=key, text=text, value=value, error=error, cached=cached, seed=seed)


def _parse(text: str | None, schema: Any) -> tuple[Any, str | None]:
    import pydantic

    if text is None or not text.strip():
        return None, "empty reply"
    body = text.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group(1).strip()
    try:
        return schema.model_validate_json(body), None
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        for e in errors:
            if e.get("type") == "json_invalid":
                return None, f"invalid JSON: {e.get('msg', '')}"[:300]
        return None, "schema: " + "; ".join(_describe(e) for e in errors[:5])[:300]


def _describe(e: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in e.get("loc", ()))
    if e.get("type") == "missing":
        return f"field '{loc}' missing"
    if not loc:
        return str(e.get("msg", "invalid"))
    return f"field '{loc}': {e.get('msg', 'invalid')}"


def _text_reply(key: str, text: str | None, seed: int, cached: bool) -> LLMReply:
    """A plain-text reply: its text is the value; only a missing text is an error (an empty string is a reply)."""
    error = "empty reply" if text is None else None
    return LLMReply(key=key, text=text, value=text, error=error, cached=cached, seed=seed)


def _chat_parts(completion: Any) -> tuple[str | None, dict[str, int], str | None]:
    """Text, usage and finish reason of a chat completion."""
    text = finish = None
    choices = getattr(completion, "choices", None) or []
    if choices:
        choice = choices[0]
        finish = getattr(choice, "finish_reason", None)
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        text = content if isinstance(content, str) else None
    usage = getattr(completion, "usage", None)
    return text, _clean_usage(usage.model_dump() if hasattr(usage, "model_dump") else usage), finish


def _text_completion_parts(completion: Any) -> tuple[str | None, dict[str, int], str | None]:
    """Text, usage and finish reason of a (legacy) text completion."""
    text = finish = None
    choices = getattr(completion, "choices", None) or []
    if choices:
        finish = getattr(choices[0], "finish_reason", None)
        content = getattr(choices[0], "text", None)
        text = content if isinstance(content, str) else None
    usage = getattr(completion, "usage", None)
    return text, _clean_usage(usage.model_dump() if hasattr(usage, "model_dump") else usage), finish


def _clean_usage(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    return {
        k: int(usage[k])
        for k in ("prompt_tokens", "completion_tokens")
        if isinstance(usage.get(k), (int, float)) and not isinstance(usage.get(k), bool)
    }


def _sdk_retries(response: Any) -> bool:
    """Whether the SDK retried a response of this status (mirrors openai's `_should_retry`, for the message)."""
    flag = response.headers.get("x-should-retry")
    if flag in ("true", "false"):
        return flag == "true"
    return response.status_code in (408, 409, 429) or response.status_code >= 500


def _status_detail(exc: Any) -> str:
    """The endpoint's error message, if its body has one (the SDK passes the `error` object as `body`)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    msg = body.get("message") if isinstance(body, dict) else body if isinstance(body, str) else None
    return " ".join(str(msg).split())[:200] if msg else ""


def _schema_name(schema: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", getattr(schema, "__name__", "reply"))[:64] or "reply"


def _check_schema(schema: Any) -> None:
    methods = ("model_validate_json", "model_json_schema")
    if not (isinstance(schema, type) and all(hasattr(schema, m) for m in methods)):
        raise InputError(f"the reply schema must be a pydantic BaseModel subclass, got {schema!r}")


def _copy_reply(reply: LLMReply) -> LLMReply:
    """A reply for a duplicate request in the same batch: the same outcome, counted as a cache hit."""
    return LLMReply(
        key=reply.key,
        text=reply.text,
        value=reply.value.model_copy(deep=True) if hasattr(reply.value, "model_copy") else reply.value,
        error=reply.error,
        cached=True,
        usage=dict(reply.usage),
        seconds=0.0,
        seed=reply.seed,
    )


def _new_stats() -> dict[str, int]:
    return {"calls": 0, "cache_hits": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}
