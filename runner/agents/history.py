"""The conversation an LLM agent keeps, provider-neutral, and the policy that trims it.

Shape: a fixed opening user message (the kickoff), then one `Exchange` per model reply:
what the model said and the tool calls it made, then (filled at the next turn) the results
of those calls and the notes that came with them (operator messages, runner notices, the
time left). A provider module renders this into its wire format; because an exchange is
rendered whole, a tool call is never sent without its result, nor a result without its call.

Trimming policy (`trim`), applied before a request when the estimated prompt nears the
context window:

1. Nothing happens while the estimate is under the high-water mark (`HIGH_WATER` of the
   budget). Above it, trimming goes down to `LOW_WATER`, so it happens in chunks, not on
   every turn (each trim changes the prompt prefix, which defeats provider-side caching).
2. The system prompt and the opening message are always kept, and so are the last
   `keep_last` exchanges while anything older is left.
3. First, outside the last `keep_last` exchanges, oldest first: tool outputs longer than
   `STUB_MIN` chars become "[output elided: N chars]", and long string arguments of the
   calls (a written file's content) become "[elided: N chars]".
4. Then the oldest whole exchanges are dropped (call and result together) until the
   estimate fits, never the newest one; the opening says how many steps were removed.
5. If the newest exchange alone is still too large, its outputs are cut to head and tail.

Tokens are estimated from characters: `tokens_per_char` defaults to 1/4 and the agent
recalibrates it from the input tokens the provider reported for the previous request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

KEEP_LAST = 6
STUB_MIN = 200
HIGH_WATER = 0.85
LOW_WATER = 0.6
DEFAULT_TOKENS_PER_CHAR = 0.25


@dataclass
class CallRecord:
    id: str
    name: str
    wire_args: dict[str, Any] | str  # as the model sent them: an object, or OpenAI's raw JSON text


@dataclass
class ResultRecord:
    call_id: str
    name: str
    ok: bool
    output: str


@dataclass
class Trailer:
    """User-side text sent after results: operator messages, notices, then the time left."""

    notes: list[str] = field(default_factory=list)
    time_left: str = ""

    def text(self) -> str:
        parts = [*self.notes, self.time_left] if self.time_left else list(self.notes)
        return "\n\n".join(p for p in parts if p)


@dataclass
class Exchange:
    text: str
    calls: list[CallRecord]
    results: list[ResultRecord] | None = None  # None until the calls have run
    trailer: Trailer = field(default_factory=Trailer)
    # the model's reasoning blocks as the provider sent them (Anthropic's thinking blocks,
    # signature included): sent back with the reply, as the API requires alongside tool use
    thinking: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class History:
    opening: str
    opening_trailer: Trailer = field(default_factory=Trailer)
    exchanges: list[Exchange] = field(default_factory=list)
    dropped: int = 0  # exchanges removed by trimming

    def trailer(self) -> Trailer:
        """Where new user-side text goes: after the newest exchange, or the opening."""
        return self.exchanges[-1].trailer if self.exchanges else self.opening_trailer

    def opening_text(self) -> str:
        text = self.opening
        if self.dropped:
            text += (f"\n\n[{self.dropped} earlier steps were removed from this conversation "
                     "to fit the context window.]")
        return text


@dataclass(frozen=True)
class TrimReport:
    elided: int = 0  # tool outputs and arguments replaced by stubs
    dropped: int = 0  # whole exchanges removed
    truncated: int = 0  # outputs of the newest exchange cut
    before_tokens: int = 0
    after_tokens: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.elided or self.dropped or self.truncated)


def _args_chars(args: dict[str, Any] | str) -> int:
    return len(args) if isinstance(args, str) else len(json.dumps(args, ensure_ascii=False))


def exchange_chars(ex: Exchange) -> int:
    n = len(ex.text) + len(ex.trailer.text())
    n += sum(len(json.dumps(b)) for b in ex.thinking)
    for c in ex.calls:
        n += len(c.name) + len(c.id) + _args_chars(c.wire_args) + 40  # 40: per-block framing
    for r in ex.results or []:
        n += len(r.output) + len(r.call_id) + 40
    return n


def history_chars(history: History) -> int:
    return (len(history.opening_text()) + len(history.opening_trailer.text())
            + sum(exchange_chars(ex) for ex in history.exchanges))


def estimate_tokens(chars: int, tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR) -> int:
    return int(chars * tokens_per_char) + 1


def _elide_args(args: dict[str, Any] | str) -> tuple[dict[str, Any] | str, int]:
    if isinstance(args, str):
        if len(args) <= STUB_MIN:
            return args, 0
        return json.dumps({"elided": f"{len(args)} chars"}), 1
    out: dict[str, Any] = {}
    n = 0
    for k, v in args.items():
        if isinstance(v, str) and len(v) > STUB_MIN:
            out[k] = f"[elided: {len(v)} chars]"
            n += 1
        else:
            out[k] = v
    return out, n


def elide(ex: Exchange) -> int:
    """Replace long outputs and arguments of one exchange by stubs; how many were replaced."""
    n = 0
    for r in ex.results or []:
        if len(r.output) > STUB_MIN and not r.output.startswith("[output elided:"):
            r.output = f"[output elided: {len(r.output)} chars]"
            n += 1
    for c in ex.calls:
        c.wire_args, k = _elide_args(c.wire_args)
        n += k
    return n


def _cut(text: str, keep: int) -> str:
    if len(text) <= keep:
        return text
    half = max(keep // 2, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} chars cut ...]\n{text[-half:]}"


def trim(history: History, *, budget_tokens: int, overhead_chars: int = 0,
         tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR, keep_last: int = KEEP_LAST,
         force: bool = False) -> TrimReport:
    """Apply the policy above in place. `overhead_chars`: the system prompt and tool specs.

    `force` trims to the low-water mark even below the high-water mark (after a provider
    said the prompt was too long).
    """
    def tokens() -> int:
        return estimate_tokens(history_chars(history) + overhead_chars, tokens_per_char)

    before = tokens()
    if not force and before <= budget_tokens * HIGH_WATER:
        return TrimReport(before_tokens=before, after_tokens=before)
    target = budget_tokens * LOW_WATER
    elided = dropped = truncated = 0
    older = max(len(history.exchanges) - keep_last, 0)
    for ex in history.exchanges[:older]:
        if tokens() <= target:
            break
        elided += elide(ex)
    while tokens() > target and len(history.exchanges) > 1:
        history.exchanges.pop(0)
        history.dropped += 1
        dropped += 1
    if tokens() > target and history.exchanges:
        newest = history.exchanges[-1]
        spare = max(int(target / tokens_per_char) - overhead_chars
                    - history_chars(history) + exchange_chars(newest), 0)
        share = max(spare // max(len(newest.results or []) + 1, 1), 400)
        for r in newest.results or []:
            if len(r.output) > share:
                r.output = _cut(r.output, share)
                truncated += 1
    return TrimReport(elided, dropped, truncated, before, tokens())
