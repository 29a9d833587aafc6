"""A local stand-in for the LLM providers that speaks their wire protocols to the real SDKs.

    with LLMServer() as srv:
        srv.script(Reply.call("bash", {"command": "ls"}), Reply.error(429, retry_after=1),
                   Reply.say("done"))
        agent = AnthropicAgent("claude-3-5-sonnet-20240620", api_key="k", base_url=srv.url)
        agent = OpenAIAgent("gpt-4o", api_key="k", base_url=srv.openai_url)

POST /v1/messages is Anthropic's Messages API and POST /v1/chat/completions is OpenAI's
Chat Completions (non-streaming), with their response and error bodies, status codes and
retry headers. Replies are taken from one script queue in order, whichever endpoint asks,
and every request is recorded (path, headers, JSON body, arrival time) so a test can assert
what the model was sent. Like the real APIs, it checks the key header and refuses a
conversation in which a tool call and its result are not paired (400 invalid_request_error);
an empty script answers 500 so a test that runs past its script fails loudly.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                     403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                     429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
_OPENAI_ERRORS = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                  404: ("invalid_request_error", "model_not_found"),
                  429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None),
                  503: ("server_error", None)}


@dataclass
class Reply:
    """One scripted answer: text and tool calls, or an HTTP error."""

    text: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (name, args: dict or raw JSON text)
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering (to provoke client timeouts)
    code: str | None = None  # OpenAI error code override (e.g. context_length_exceeded)

    @staticmethod
    def say(text: str) -> Reply:
        return Reply(text=text)

    @staticmethod
    def call(name: str, args: Any, text: str = "") -> Reply:
        return Reply(text=text, calls=[(name, args)])

    @staticmethod
    def calls_(*calls: tuple[str, Any], text: str = "") -> Reply:
        return Reply(text=text, calls=list(calls))

    @staticmethod
    def error(status: int, message: str = "", *, retry_after: float | None = None,
              retry_after_ms: int | None = None, code: str | None = None) -> Reply:
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        return Reply(status=status, message=message or f"scripted error {status}",
                     headers=headers, code=code)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival


def _tokens(obj: Any) -> int:
    return max(1, len(json.dumps(obj)) // 4)


def check_anthropic(body: dict[str, Any]) -> str:
    """Why the Messages API would refuse this conversation ('' if it would not)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: at least one message is required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if msgs[0].get("role") != "user":
        return "messages: first message must use the \"user\" role"
    pending: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role")
        if i and role == msgs[i - 1].get("role"):
            return f"messages.{i}: roles must alternate between \"user\" and \"assistant\""
        content = m.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        if not blocks:
            return f"messages.{i}: all messages must have non-empty content"
        if role == "user":
            got = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            if pending - got:
                return (f"messages.{i}: tool_use ids were found without tool_result blocks "
                        f"immediately after: {', '.join(sorted(pending - got))}")
            if got - pending:
                return f"messages.{i}.content: unexpected tool_use_id found in tool_result blocks"
            pending = set()
        else:
            pending = {b.get("id") for b in blocks if b.get("type") == "tool_use"}
            if any(b.get("type") == "text" and not b.get("text") for b in blocks):
                return f"messages.{i}: text content blocks must be non-empty"
    if msgs[-1].get("role") != "user" or pending:
        return "messages: the conversation must end with a user message"
    return ""


def check_openai(body: dict[str, Any]) -> str:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must contain at least one message"
    pending: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                return (f"Invalid parameter: messages with role 'tool' must be a response to a "
                        f"preceeding message with 'tool_calls' (messages.[{i}])")
            pending.discard(m.get("tool_call_id"))
            continue
        if pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    f"responding to each 'tool_call_id'. Missing: {', '.join(sorted(pending))}")
        if role == "assistant":
            pending = {tc["id"] for tc in m.get("tool_calls") or []}
    if pending:
        return "An assistant message with 'tool_calls' must be followed by tool messages"
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        return

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = None
        owner = self.server.owner
        owner.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()},
                                       body, time.monotonic()))
        if self.path.rstrip("/") == "/v1/messages":
            self._anthropic(owner, body)
        elif self.path.rstrip("/") == "/v1/chat/completions":
            self._openai(owner, body)
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def _anthropic_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"type": "error", "error": {
            "type": _ANTHROPIC_ERRORS.get(status, "api_error"), "message": message}}, headers)

    def _anthropic(self, owner: LLMServer, body: Any) -> None:
        # SDKs send the key as x-api-key (older) or a bearer token (newer); either will do.
        bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ").strip()
        if not (self.headers.get("x-api-key") or bearer) or not self.headers.get("anthropic-version"):
            return self._anthropic_error(401, "x-api-key header is required")
        if not isinstance(body, dict):
            return self._anthropic_error(400, "request body is not JSON")
        problem = check_anthropic(body)
        if problem:
            owner.refusals.append(problem)
            return self._anthropic_error(400, problem)
        reply = owner.next_reply()
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.status != 200:
            return self._anthropic_error(reply.status, reply.message, reply.headers)
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        for name, args in reply.calls:
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    args = {}
            content.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                            "name": name, "input": args})
        self._send(200, {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": body.get("model"), "content": content,
            "stop_reason": "tool_use" if reply.calls else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": _tokens(body), "output_tokens": _tokens(content)},
        })

    def _openai_error(self, status: int, message: str, headers: dict[str, str] | None = None,
                      code: str | None = None) -> None:
        kind, default_code = _OPENAI_ERRORS.get(status, ("server_error", None))
        self._send(status, {"error": {"message": message, "type": kind, "param": None,
                                      "code": code or default_code}}, headers)

    def _openai(self, owner: LLMServer, body: Any) -> None:
        auth = self.headers.get("authorization") or ""
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return self._openai_error(401, "You didn't provide an API key.")
        if not isinstance(body, dict):
            return self._openai_error(400, "We could not parse the JSON body of your request.")
        problem = check_openai(body)
        if problem:
            owner.refusals.append(problem)
            return self._openai_error(400, problem)
        reply = owner.next_reply()
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.status != 200:
            return self._openai_error(reply.status, reply.message, reply.headers, reply.code)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None,
                                   "refusal": None}
        if reply.calls:
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": name,
                              "arguments": args if isinstance(args, str) else json.dumps(args)}}
                for name, args in reply.calls]
        prompt, completion = _tokens(body), _tokens(message)
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if reply.calls else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
            "system_fingerprint": "fp_local",
        })


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LLMServer


class LLMServer:
    """The server on 127.0.0.1 and a free port, serving from a thread; a context manager."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.refusals: list[str] = []  # conversations refused as malformed
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"  # Anthropic's base URL
        self.openai_url = f"{self.url}/v1"  # OpenAI's base URL
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def next_reply(self) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        return Reply.error(500, "the test script has no reply left")

    @property
    def remaining(self) -> int:
        return len(self._script)

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    def __enter__(self) -> LLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
