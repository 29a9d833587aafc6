"""A local stand-in for the LLM providers that speaks their wire protocols to the real SDKs.

    with LLMServer() as srv:
        srv.script(Reply.call("bash", {"command": "ls"}), Reply.error(429, retry_after=1),
                   Reply.say("done"))
        agent = AnthropicAgent("claude-3-5-sonnet-20240620", api_key="k", base_url=srv.url)
        agent = OpenAIAgent("gpt-4o", api_key="k", base_url=srv.openai_url)

POST /v1/messages is Anthropic's Messages API and POST /v1/chat/completions is OpenAI's
Chat Completions, with their response and error bodies, status codes and retry headers, and
with `"stream": true` their server-sent events: Anthropic's message_start, content_block_*
(text_delta, input_json_delta, thinking_delta, signature_delta), message_delta and
message_stop; OpenAI's chat.completion.chunk deltas, the usage chunk that
`stream_options.include_usage` asks for, and `[DONE]`. A scripted reply can stream slowly
(`chunk_delay_s`) or be cut after some events (`cut_after`: the connection drops mid-body).

Cache accounting as the APIs report it, on the server's `clock`: Anthropic caches the
prefix (tools, system, messages) at each `cache_control` breakpoint (at most 4, 1-hour ones
before 5-minute ones) for its `ttl`, a later request reads the longest live prefix ending
at or up to 20 blocks before one of its breakpoints, and usage splits the input into
`input_tokens`, `cache_creation_input_tokens` (with its 5m/1h split) and
`cache_read_input_tokens`; OpenAI caches every prompt's prefix for 10 minutes on its own
and reports the longest one seen before, in 128-token steps from 1024, as
`prompt_tokens_details.cached_tokens` within `prompt_tokens`. Prefixes shorter than
`min_cache_tokens` are not cached, as on the real APIs. Extended thinking: a reply's
thinking block carries a signature, and a request with thinking on must send the last
assistant turn's thinking block back, signature intact, ahead of its tool use.

Replies are taken from one script queue in order, whichever endpoint asks, and every
request is recorded (path, headers, JSON body, arrival time, when each streamed event left)
so a test can assert what the model was sent. Like the real APIs, it checks the key header
and refuses a conversation in which a tool call and its result are not paired (400
invalid_request_error); an empty script answers 500 so a test that runs past its script
fails loudly.
"""

from __future__ import annotations

import hashlib
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



class Clock:
    """A settable clock for the stand-in and the agent under test: a turn's wait is a step of it."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

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
    thinking: str = ""  # Anthropic: an extended-thinking block ahead of the reply
    chunk_chars: int = 6  # a streamed text or argument string goes out in pieces this long
    chunk_delay_s: float = 0.0  # a streamed reply waits this long before each event
    cut_after: int | None = None  # a streamed reply drops the connection after this many events

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
    sent: list[float] = field(default_factory=list)  # time.monotonic() as each streamed event left
    first_token: int | None = None  # which streamed event carried the reply's first token


TTL_S = {"5m": 300.0, "1h": 3600.0}
OPENAI_CACHE_S = 600.0
LOOKBACK = 20  # blocks before a breakpoint the Messages API looks back for a cache hit


def _pieces(text: str, n: int) -> list[str]:
    return [text[i:i + n] for i in range(0, len(text), max(n, 1))] or [""]


def _signature(thinking: str) -> str:
    return hashlib.sha256(b"stand-in:" + thinking.encode()).hexdigest()[:48]


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


def _strip(block: Any) -> Any:
    return {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block


def anthropic_prefix(body: dict[str, Any]) -> tuple[list[Any], list[tuple[int, str]]]:
    """The request as the cache sees it: its blocks in order (tools, system, messages), and
    the breakpoints as (block index, ttl)."""
    seq: list[Any] = []
    marks: list[tuple[int, str]] = []

    def add(tag: Any, block: Any) -> None:
        seq.append([tag, _strip(block)])
        cc = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(cc, dict):
            marks.append((len(seq) - 1, str(cc.get("ttl", "5m"))))

    for t in body.get("tools") or []:
        add("tool", t)
    system = body.get("system")
    for b in ([{"type": "text", "text": system}] if isinstance(system, str) else system or []):
        add("system", b)
    for i, m in enumerate(body.get("messages") or []):
        content = m.get("content")
        for b in content if isinstance(content, list) else [{"type": "text", "text": content}]:
            add([i, m.get("role")], b)
    return seq, marks


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

    def _stream(self, reply: Reply, rec: Recorded, events: list[bytes]) -> None:
        """Server-sent events in a chunked body; a cut drops the connection mid-body."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        self.end_headers()
        try:
            for n, ev in enumerate(events):
                if reply.cut_after is not None and n >= reply.cut_after:
                    self.close_connection = True  # no terminating chunk: an incomplete body
                    return
                if reply.chunk_delay_s:
                    time.sleep(reply.chunk_delay_s)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                self.wfile.flush()
                rec.sent.append(time.monotonic())
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = None
        owner = self.server.owner
        rec = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                       time.monotonic())
        owner.requests.append(rec)
        if self.path.rstrip("/") == "/v1/messages":
            self._anthropic(owner, body, rec)
        elif self.path.rstrip("/") == "/v1/chat/completions":
            self._openai(owner, body, rec)
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def _anthropic_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"type": "error", "error": {
            "type": _ANTHROPIC_ERRORS.get(status, "api_error"), "message": message}}, headers)

    def _anthropic(self, owner: LLMServer, body: Any, rec: Recorded) -> None:
        # SDKs send the key as x-api-key (older) or a bearer token (newer); either will do.
        bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ").strip()
        if not (self.headers.get("x-api-key") or bearer) or not self.headers.get("anthropic-version"):
            return self._anthropic_error(401, "x-api-key header is required")
        if not isinstance(body, dict):
            return self._anthropic_error(400, "request body is not JSON")
        problem = check_anthropic(body) or owner.check_thinking(body) or owner.check_breakpoints(body)
        if problem:
            owner.refusals.append(problem)
            return self._anthropic_error(400, problem)
        reply = owner.next_reply()
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.status != 200:
            return self._anthropic_error(reply.status, reply.message, reply.headers)
        content: list[dict[str, Any]] = []
        if reply.thinking:
            content.append({"type": "thinking", "thinking": reply.thinking,
                            "signature": owner.sign(reply.thinking)})
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
        usage = owner.anthropic_usage(body)
        usage["output_tokens"] = _tokens(content)
        stop = "tool_use" if reply.calls else "end_turn"
        message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                   "model": body.get("model"), "content": content, "stop_reason": stop,
                   "stop_sequence": None, "usage": usage}
        if body.get("stream") is not True:
            return self._send(200, message)
        events: list[bytes] = []

        def ev(kind: str, data: dict[str, Any]) -> None:
            events.append(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())

        ev("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                         "usage": {**usage, "output_tokens": 1}}})
        for i, block in enumerate(content):
            kind = block["type"]
            if kind == "text":
                ev("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
                for piece in _pieces(block["text"], reply.chunk_chars):
                    ev("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": piece}})
            elif kind == "thinking":
                ev("content_block_start", {"index": i, "content_block": {
                    "type": "thinking", "thinking": "", "signature": ""}})
                for piece in _pieces(block["thinking"], reply.chunk_chars):
                    ev("content_block_delta", {"index": i, "delta": {"type": "thinking_delta",
                                                                    "thinking": piece}})
                ev("content_block_delta", {"index": i, "delta": {"type": "signature_delta",
                                                                "signature": block["signature"]}})
            else:
                ev("content_block_start", {"index": i, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
                for piece in _pieces(json.dumps(block["input"]), reply.chunk_chars):
                    ev("content_block_delta", {"index": i, "delta": {"type": "input_json_delta",
                                                                    "partial_json": piece}})
            ev("content_block_stop", {"index": i})
        rec.first_token = 2 if content else None  # after message_start and content_block_start
        ev("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                             "usage": {"output_tokens": usage["output_tokens"]}})
        ev("message_stop", {})
        self._stream(reply, rec, events)

    def _openai_error(self, status: int, message: str, headers: dict[str, str] | None = None,
                      code: str | None = None) -> None:
        kind, default_code = _OPENAI_ERRORS.get(status, ("server_error", None))
        self._send(status, {"error": {"message": message, "type": kind, "param": None,
                                      "code": code or default_code}}, headers)

    def _openai(self, owner: LLMServer, body: Any, rec: Recorded) -> None:
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
        cached = owner.openai_cached(body, prompt)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
        finish = "tool_calls" if reply.calls else "stop"
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": body.get("model"), "system_fingerprint": "fp_local"}
        if body.get("stream") is not True:
            return self._send(200, {**head, "object": "chat.completion", "usage": usage,
                                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                                 "finish_reason": finish}]})
        events: list[bytes] = []

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            data = {**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            events.append(f"data: {json.dumps(data)}\n\n".encode())

        chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in _pieces(reply.text, reply.chunk_chars) if reply.text else []:
            chunk({"content": piece})
        for k, tc in enumerate(message.get("tool_calls") or []):
            chunk({"tool_calls": [{"index": k, "id": tc["id"], "type": "function",
                                   "function": {"name": tc["function"]["name"], "arguments": ""}}]})
            for piece in _pieces(tc["function"]["arguments"], reply.chunk_chars):
                chunk({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
        rec.first_token = 1 if len(events) > 1 else None  # after the role chunk
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            data = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            events.append(f"data: {json.dumps(data)}\n\n".encode())
        events.append(b"data: [DONE]\n\n")
        self._stream(reply, rec, events)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LLMServer


class LLMServer:
    """The server on 127.0.0.1 and a free port, serving from a thread; a context manager."""

    def __init__(self, *, min_cache_tokens: int = 1024) -> None:
        self.requests: list[Recorded] = []
        self.refusals: list[str] = []  # conversations refused as malformed
        self.min_cache_tokens = min_cache_tokens
        self.clock = time.monotonic  # the caches' clock: a benchmark may move it on by hand
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._anthropic_cache: dict[str, tuple[float, str]] = {}  # prefix hash -> (expiry, ttl)
        self._openai_cache: dict[str, float] = {}  # prompt prefix text -> expiry
        self._signatures: set[str] = set()
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

    # -- the providers' caches --------------------------------------------------------------

    def check_breakpoints(self, body: dict[str, Any]) -> str:
        _, marks = anthropic_prefix(body)
        if len(marks) > 4:
            return f"A maximum of 4 blocks with cache_control may be provided. Found {len(marks)}."
        ttls = [t for _, t in marks]
        if any(t not in TTL_S for t in ttls):
            return "cache_control.ttl: Input should be '5m' or '1h'"
        if "5m" in ttls and "1h" in ttls[ttls.index("5m"):]:
            return ("a ttl='1h' cache_control block must not come after a ttl='5m' "
                    "cache_control block")
        return ""

    def anthropic_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """The usage block for this request, reading and writing the prompt cache."""
        total = _tokens(body)
        seq, marks = anthropic_prefix(body)
        now = self.clock()
        # each prefix's hash and size, in one pass: a long conversation is hashed once
        keys: list[str] = []
        sizes: list[int] = []
        h = hashlib.sha256()
        chars = 2  # json.dumps of a list: "[" items joined by ", " "]"
        for j, item in enumerate(seq):
            text = json.dumps(item)
            h.update(text.encode() + b"\x00")
            chars += len(text) + (2 if j else 0)
            keys.append(h.copy().hexdigest())
            sizes.append(max(1, chars // 4))

        def key(k: int) -> str:
            return keys[k]

        def size(k: int) -> int:
            return sizes[k]

        with self._lock:
            hit, read = -1, 0
            candidates = sorted({j for bp, _ in marks for j in range(bp, max(bp - LOOKBACK, -1), -1)},
                                reverse=True)
            for j in candidates:
                entry = self._anthropic_cache.get(key(j))
                if entry is not None and entry[0] > now and size(j) >= self.min_cache_tokens:
                    hit, read = j, size(j)
                    self._anthropic_cache[key(j)] = (now + TTL_S[entry[1]], entry[1])  # a hit refreshes
                    break
            written = {"5m": 0, "1h": 0}
            done = read
            for bp, ttl in marks:
                if bp <= hit or size(bp) < self.min_cache_tokens:
                    continue
                self._anthropic_cache[key(bp)] = (now + TTL_S[ttl], ttl)
                written[ttl] += max(size(bp) - done, 0)
                done = max(done, size(bp))
        read = min(read, total)
        write = min(written["5m"] + written["1h"], total - read)
        return {"input_tokens": total - read - write, "cache_creation_input_tokens": write,
                "cache_read_input_tokens": read,
                "cache_creation": {"ephemeral_5m_input_tokens": min(written["5m"], write),
                                   "ephemeral_1h_input_tokens": write - min(written["5m"], write)}}

    def openai_cached(self, body: dict[str, Any], prompt_tokens: int) -> int:
        """Cached prompt tokens: the longest prefix of an earlier prompt, in 128-token steps."""
        text = json.dumps({"tools": body.get("tools"), "messages": body.get("messages")})
        now = self.clock()
        with self._lock:
            best = 0
            for seen, expiry in list(self._openai_cache.items()):
                if expiry <= now:
                    del self._openai_cache[seen]
                    continue
                n = 0
                limit = min(len(seen), len(text))
                step = 4096
                while n < limit:  # a common prefix, found in strides
                    m = min(n + step, limit)
                    if seen[n:m] == text[n:m]:
                        n = m
                    elif step > 1:
                        step //= 2
                    else:
                        break
                if n > best:
                    best = n
                    self._openai_cache[seen] = now + OPENAI_CACHE_S
            self._openai_cache[text] = now + OPENAI_CACHE_S
            while len(self._openai_cache) > 64:
                self._openai_cache.pop(next(iter(self._openai_cache)))
        if prompt_tokens < max(self.min_cache_tokens, 1024):
            return 0
        return min(best // 4 // 128 * 128, prompt_tokens)

    # -- extended thinking ----------------------------------------------------------------

    def sign(self, thinking: str) -> str:
        sig = _signature(thinking)
        with self._lock:
            self._signatures.add(sig)
        return sig

    def check_thinking(self, body: dict[str, Any]) -> str:
        """Why the Messages API would refuse this request's thinking ('' if it would not)."""
        cfg = body.get("thinking")
        if not isinstance(cfg, dict) or cfg.get("type") != "enabled":
            return ""
        budget = cfg.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if body.get("max_tokens", 0) <= budget:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
        msgs = body.get("messages") or []
        for i, m in enumerate(msgs):
            content = m.get("content") if isinstance(m.get("content"), list) else []
            for k, b in enumerate(content):
                if b.get("type") == "thinking" and b.get("signature") not in self._signatures:
                    return f"messages.{i}.content.{k}: Invalid `signature` in `thinking` block"
        last = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i].get("role") == "assistant"), None)
        if last is not None and isinstance(msgs[last].get("content"), list):
            blocks = msgs[last]["content"]
            if any(b.get("type") == "tool_use" for b in blocks) and blocks[0].get("type") not in (
                    "thinking", "redacted_thinking"):
                return (f"messages.{last}.content.0.type: Expected `thinking` or "
                        f"`redacted_thinking`, but found `{blocks[0].get('type')}`. When `thinking` "
                        "is enabled, a final `assistant` message must start with a thinking block.")
        return ""

    def __enter__(self) -> LLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
