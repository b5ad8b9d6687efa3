"""A small OpenAI-compatible chat-completions (and legacy completions) server for tests (standard library only).

    with OpenAIServer() as server:
        server.responder = lambda req: Reply(content='{"answer": 1}')
        ...  # point a client at server.url

Behaviour is scripted by `responder(request_json) -> Reply`; `Script` answers per request by a marker in the last
user message ("first call 500, then OK"). Every request is recorded (parsed JSON and Authorization header) and
the server measures how many requests were in flight at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Sequence

__all__ = ["Reply", "Recorded", "OpenAIServer", "Script", "last_user_message", "rewrite_responder"]


@dataclass
class Reply:
    """What the server answers to one request.

    `content`: the assistant message text. `status`: HTTP status (non-200 gets an OpenAI-shaped error body).
    `delay`: seconds to wait before answering. `headers`: extra response headers (e.g. {"retry-after-ms": "10"}).
    `body`: a raw body sent as is, overriding everything else. `finish_reason`: of the choice.
    """

    content: str | None = None
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    finish_reason: str = "stop"

    @classmethod
    def json(cls, obj: Any, **kw: Any) -> "Reply":
        """A reply whose content is `obj` as JSON."""
        return cls(content=json.dumps(obj), **kw)

    @classmethod
    def error(cls, status: int, message: str = "scripted error", retry_after_ms: int | None = 10, **kw: Any) -> "Reply":
        """An error reply; by default it asks for a 10 ms retry delay, so SDK retries are fast."""
        headers = dict(kw.pop("headers", {}))
        if retry_after_ms is not None:
            headers.setdefault("retry-after-ms", str(retry_after_ms))
        return cls(status=status, headers=headers, content=message, **kw)


@dataclass
class Recorded:
    """One request the server received."""

    json: dict[str, Any]
    authorization: str | None
    path: str
    time: float


Responder = Callable[[dict[str, Any]], Reply]


def last_user_message(request: Mapping[str, Any]) -> str:
    """The text of the last user message of a chat request, or the prompt of a completions request ("" when
    none)."""
    if not request.get("messages") and isinstance(request.get("prompt"), str):
        return request["prompt"]
    for m in reversed(request.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def echo_responder(request: dict[str, Any]) -> Reply:
    """The default: a JSON object echoing the last user message."""
    return Reply.json({"echo": last_user_message(request)})


class Script:
    """A responder that answers by marker: the first marker (a substring) found in the last user message picks
    the next reply of its list, consumed in order; when there is no marker or the list is used up, `default`
    answers (a Reply, or a responder callable)."""

    def __init__(self, rules: Mapping[str, Sequence[Reply]], default: Reply | Responder = echo_responder):
        self._rules = {k: list(v) for k, v in rules.items()}
        self._default = default
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Reply:
        text = last_user_message(request)
        with self._lock:
            for marker, replies in self._rules.items():
                if marker in text and replies:
                    return replies.pop(0)
        return self._default(request) if callable(self._default) else self._default


class OpenAIServer:
    """`POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models` on 127.0.0.1, a random port, in a
    background thread.
    A completions request gets the reply's `content` as its choice's `text`.

    `url` is the base URL for a client (".../v1"); `requests` the recorded requests; `calls` their count;
    `max_in_flight` the most requests handled at once since the last `reset()`."""

    def __init__(self, responder: Responder | None = None):
        self.responder: Responder = responder or echo_responder
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._in_flight = 0
        self.max_in_flight = 0
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self._requests)

    def reset(self) -> None:
        """Forget recorded requests and the in-flight maximum (the responder stays)."""
        with self._lock:
            self._requests.clear()
            self.max_in_flight = self._in_flight

    def close(self) -> None:
        self._closing.set()  # wakes handlers sleeping on a delay
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAIServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # called by the handler
    def _enter(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _completion(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages") or [] if isinstance(m, dict))
    completion_tokens = len((reply.content or "").split())
    return {
        "id": f"chatcmpl-test-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "test-model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _text_completion(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt = request.get("prompt")
    prompt_tokens = len(prompt.split()) if isinstance(prompt, str) else 0
    completion_tokens = len((reply.content or "").split())
    return {
        "id": f"cmpl-test-{time.monotonic_ns()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.get("model", "test-model"),
        "choices": [{"index": 0, "text": reply.content, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error_body(reply: Reply) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_exceeded"}.get(
        reply.status, "server_error"
    )
    return {"error": {"message": reply.content or f"error {reply.status}", "type": kind, "param": None, "code": None}}


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the per-request log lines of `BaseHTTPRequestHandler`."""

        def _send(self, status: int, body: str, headers: Mapping[str, str] = ()) -> None:
            data = body.encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in dict(headers).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                self.close_connection = True  # the client gave up (a timeout test)

        def do_GET(self) -> None:
            # `GET /v1/models` (what an endpoint check asks) answers without being recorded, so `calls` counts
            # completions only
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [
                    {"id": "test-model", "object": "model", "created": 0, "owned_by": "itd-tests"}]}))
                return
            self._send(404, json.dumps({"error": {"message": "not found", "type": "invalid_request_error"}}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if server._closing.is_set():  # closed: a kept-alive connection is dropped unanswered, as by a dead server
                self.close_connection = True
                return
            route = self.path.rstrip("/")
            if route not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}}))
                return
            try:
                request = json.loads(raw or b"{}")
            except ValueError:
                self._send(400, json.dumps({"error": {"message": "body is not JSON", "type": "invalid_request_error"}}))
                return
            rec = Recorded(json=request, authorization=self.headers.get("Authorization"), path=self.path, time=time.time())
            server._enter(rec)
            try:
                try:
                    reply = server.responder(request)
                except Exception as exc:  # a broken test responder: a 500 the test will notice
                    reply = Reply(status=500, content=f"responder raised {type(exc).__name__}: {exc}")
                if reply.delay > 0 and server._closing.wait(reply.delay):
                    self.close_connection = True
                    return
                if reply.body is not None:
                    body = reply.body
                elif reply.status == 200 and route == "/v1/completions":
                    body = json.dumps(_text_completion(request, reply))
                elif reply.status == 200:
                    body = json.dumps(_completion(request, reply))
                else:
                    body = json.dumps(_error_body(reply))
                self._send(reply.status, body, reply.headers)
            finally:
                server._leave()

    return Handler


_MATH_ITEM = re.compile(r"Question: (.*?)\n\nSolution:\n(.*?)\n</item>", re.S)
_MCQ_ITEM = re.compile(r"Question: (.*?)\n\nOptions:\n(.*?)\n</item>", re.S)


def rewrite_responder(request: dict[str, Any], delay: float = 0.0) -> Reply:
    """A stand-in for a rewriting LLM, for the `itd` rewrite prompts: a math item comes back in a new frame with
    its numbers, steps and answer kept; an MCQ item with every option reworded in place."""
    text = last_user_message(request)
    m = _MATH_ITEM.search(text)
    if m:
        question = "Picture a different town, different people and the same arithmetic. " + m.group(1).replace(" she ", " they ")
        return Reply.json({"question": question, "solution": m.group(2)}, delay=delay)
    m = _MCQ_ITEM.search(text)
    if m:
        options = [line.split(". ", 1)[1] for line in m.group(2).splitlines()]
        return Reply.json({"question": "Consider the following carefully. " + m.group(1),
                           "choices": [f"The option stating: {o}" for o in options]}, delay=delay)
    return Reply.json({"error": "not a rewrite prompt"}, delay=delay)
