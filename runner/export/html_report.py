"""A run as one self-contained HTML page: header, scores, a chart of every metric, and the
timeline of actions, tool calls, results and operator interventions.

Everything is inline (CSS, and charts drawn here as SVG), and the page's content security
policy forbids any fetch, so it opens the same on an air-gapped laptop. Every piece of text
from an agent, a sandbox or a metrics file is untrusted: it loses its terminal escapes and is
HTML-escaped before it is written. A long run keeps the first and last parts of its timeline
and each chart keeps a bounded number of points; the page says what it left out.
"""

from __future__ import annotations

import html
import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runner.escapes import strip_escapes
from runner.event_data import (
    AgentStepData,
    AgentTurnData,
    GpuData,
    MetricData,
    OperatorData,
    ResourceData,
    ScoreData,
    ToolCallData,
    ToolResultData,
    UsageData,
)
from runner.events import Event
from runner.export.record import RunRecord, iso

MAX_TIMELINE = 2000  # timeline rows on the page: the first and last halves of a longer run
MAX_POINTS = 500  # points per chart series
MAX_TEXT = 4000  # characters of one result's output or one argument shown
MAX_SERIES = 48  # charts on the page
CHART_W, CHART_H, PAD, LEFT = 520, 180, 30, 60

# telemetry and what another row already shows: charts, not timeline rows
_NOT_ROWS = frozenset({"metric", "gpu", "resource", "usage", "agent.delta", "agent.message",
                       "sandbox.output", "tool.call"})

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header,section{max-width:1200px;margin:0 auto;padding:12px 20px}
header{background:#1d2330;color:#f6f7f9;max-width:none}
header h1{font-size:20px;margin:0 0 6px;word-break:break-all}
h2{font-size:16px;margin:18px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:4px 16px}
.kv span{color:#9aa4b5}
.status{display:inline-block;padding:1px 8px;border-radius:8px;background:#5b6478}
.s-succeeded{background:#1f7a3d}.s-failed{background:#a32020}.s-killed{background:#8a4b00}
.s-limit{background:#6b5b00}
.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#fff;border:1px solid #dde1e7;padding:6px}
figcaption{font-weight:600;font-size:13px}
svg text{font:10px monospace;fill:#5b6478}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:12px/1.35 ui-monospace,monospace;background:#f3f4f7;padding:4px}
.k{font:12px monospace;white-space:nowrap}
.t{font:12px monospace;color:#5b6478;white-space:nowrap}
tr.operator td{background:#fff7e0}tr.error td{background:#fdeaea}tr.score td{background:#e8f6ec}
.note{color:#8a4b00;font-style:italic}
"""
# no script, no fetch: inline styles and data: images only
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def esc(text: object) -> str:
    """Untrusted text, safe to place in HTML: escapes stripped, then HTML-escaped."""
    return html.escape(strip_escapes(str(text)), quote=True)


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return esc(text)
    return (f"{esc(text[:limit])}\n<span class=\"note\">(clipped: {len(text) - limit} more "
            "characters; the jsonl export has all of it)</span>")


def _when(ts: float | None) -> str:
    return iso(ts)[:19].replace("T", " ") + " UTC" if ts else ""


def _num(v: float) -> str:
    return f"{v:.4g}"


@dataclass(slots=True)
class Series:
    """One chart's points, thinned to MAX_POINTS by keeping every k-th point (and the last)."""

    name: str
    unit: str = ""
    points: list[tuple[float, float]] = field(default_factory=list)
    seen: int = 0
    stride: int = 1
    last: tuple[float, float] | None = None
    x_label: str = "step"  # seconds since the run's first event when a point had no step

    def add(self, x: float, y: float) -> None:
        if not math.isfinite(y):
            return
        self.seen += 1
        if (self.seen - 1) % self.stride == 0:
            self.points.append((x, y))
            if len(self.points) > MAX_POINTS:
                self.points = self.points[::2]
                self.stride *= 2
        self.last = (x, y)

    def final_points(self) -> list[tuple[float, float]]:
        pts = list(self.points)
        if self.last is not None and (not pts or pts[-1] != self.last):
            pts.append(self.last)
        return pts


def chart_svg(s: Series) -> str:
    """A line chart of one series as inline SVG, with its range on both axes."""
    pts = s.final_points()
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    w, h = CHART_W - LEFT - PAD, CHART_H - 2 * PAD

    def px(x: float, y: float) -> str:
        return f"{LEFT + (x - x0) / (x1 - x0) * w:.1f},{PAD + h - (y - y0) / (y1 - y0) * h:.1f}"

    line = " ".join(px(x, y) for x, y in pts)
    dots = "".join(f'<circle cx="{px(x, y).split(",")[0]}" cy="{px(x, y).split(",")[1]}" r="2"/>'
                   for x, y in pts) if len(pts) <= 40 else ""
    thinned = (f" ({s.seen} points, every {s.stride}th drawn)" if s.stride > 1 else
               f" ({s.seen} point{'s' if s.seen != 1 else ''})")
    return (
        f'<figure data-series="{esc(s.name)}" data-points="{len(pts)}">'
        f"<figcaption>{esc(s.name)}{esc(s.unit)}<span class=\"t\">{esc(thinned)}</span></figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{esc(s.name)}">'
        f'<rect x="{LEFT}" y="{PAD}" width="{w}" height="{h}" fill="#fafbfc" stroke="#dde1e7"/>'
        f'<text x="{LEFT - 4}" y="{PAD + 4}" text-anchor="end">{_num(y1)}</text>'
        f'<text x="{LEFT - 4}" y="{PAD + h}" text-anchor="end">{_num(y0)}</text>'
        f'<text x="{LEFT}" y="{PAD + h + 14}">{_num(x0)}</text>'
        f'<text x="{LEFT + w}" y="{PAD + h + 14}" text-anchor="end">{_num(x1)}</text>'
        f'<text x="{LEFT + w / 2}" y="{PAD + h + 26}" text-anchor="middle">{esc(s.x_label)}</text>'
        f'<polyline class="series" fill="none" stroke="#2f6fd6" stroke-width="1.5" points="{line}"/>'
        f'<g fill="#2f6fd6">{dots}</g></svg></figure>')


class _Page:
    def __init__(self, record: RunRecord, max_timeline: int) -> None:
        self.record = record
        self.t0 = record.t0
        self.count = 0  # events read
        self.metrics: dict[str, Series] = {}
        self.telemetry: dict[str, Series] = {}
        self.rows: list[str] = []
        self.tail: deque[str] = deque(maxlen=max_timeline // 2)
        self.max_rows = max_timeline
        self.total_rows = 0
        self.calls: dict[str, ToolCallData] = {}
        self.scores: list[tuple[Event, ScoreData]] = []
        self.interventions: list[tuple[Event, OperatorData]] = []
        self.tokens = [0, 0]
        self.cost = 0.0

    def _series(self, table: dict[str, Series], name: str, unit: str = "") -> Series | None:
        if name not in table and len(self.metrics) + len(self.telemetry) >= MAX_SERIES:
            return None
        return table.setdefault(name, Series(name, unit, x_label="step" if table is self.metrics
                                             else "seconds"))

    def _row(self, ev: Event, kind: str, body: str, cls: str = "") -> None:
        self.total_rows += 1
        at = ev.ts - self.t0
        row = (f'<tr class="{cls}" data-seq="{ev.seq}"><td class="t">{int(at // 60)}:{at % 60:04.1f}'
               f'</td><td class="k">{esc(kind)}</td><td>{body}</td></tr>')
        half = self.max_rows // 2
        if len(self.rows) < self.max_rows - half:
            self.rows.append(row)
        else:
            self.tail.append(row)

    def feed(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.count += 1
            at = ev.ts - self.t0
            match ev.body:
                case MetricData() as m:
                    x = float(m.step) if m.step is not None else at
                    for name, value in m.values.items():
                        s = self._point(self.metrics, name, "", x, value)
                        if s is not None and m.step is None:
                            s.x_label = "seconds"
                case GpuData() as g:
                    dev = f"gpu{g.device if g.device is not None else 0}"
                    self._point(self.telemetry, f"{dev} util", " %", at, g.util)
                    self._point(self.telemetry, f"{dev} memory", " GiB", at,
                                None if g.mem_used is None else g.mem_used / 2**30)
                    self._point(self.telemetry, f"{dev} power", " W", at, g.power_w)
                case ResourceData() as r:
                    self._point(self.telemetry, "sandbox cpu", " %", at, r.cpu_pct)
                    self._point(self.telemetry, "sandbox memory", " GiB", at,
                                None if r.mem_bytes is None else r.mem_bytes / 2**30)
                case UsageData() as u:
                    self.tokens[0] += u.input_tokens
                    self.tokens[1] += u.output_tokens
                    self.cost += u.cost_usd or 0.0
                case ToolCallData() as call:
                    self.calls[call.id] = call
            if ev.kind not in _NOT_ROWS:
                self._timeline(ev)

    def _point(self, table: dict[str, Series], name: str, unit: str, x: float,
               y: float | None) -> Series | None:
        if y is None:
            return None
        s = self._series(table, name, unit)
        if s is not None:
            s.add(x, y)
        return s

    def _timeline(self, ev: Event) -> None:
        b = ev.body
        if type(b) is AgentStepData:
            extra = "".join(f"<pre>message delivered: {_clip(m)}</pre>" for m in b.messages)
            extra += "".join(f"<pre>notice: {_clip(n)}</pre>" for n in b.notices)
            self._row(ev, "agent.step", f"step {esc(b.step)}" + extra)
        elif type(b) is AgentTurnData:
            calls = "".join(
                f"<div>&rarr; <b>{esc(c.name)}</b> <span class=\"t\">{esc(c.id)}</span>"
                f"<pre>{_clip(_args_text(self.calls[c.id].args if c.id in self.calls else c.args))}"
                "</pre></div>" for c in b.calls)
            text = f"<pre>{_clip(b.text)}</pre>" if b.text else ""
            self._row(ev, "agent.turn", f"step {b.step}{' (done)' if b.done else ''}{text}{calls}")
        elif type(b) is ToolResultData:
            state = "ok" if b.ok else "failed"
            if b.exit_code is not None:
                state += f", exit {b.exit_code}"
            if b.duration_s is not None:
                state += f", {b.duration_s:.1f} s"
            flags = [f for f in ("timed_out", "rejected", "edited", "truncated", "clipped")
                     if getattr(b, f)]
            if flags:
                state += ", " + ", ".join(flags)
            error = f"<div>{esc(b.error)}</div>" if b.error else ""
            self._row(ev, "tool.result", f"<b>{esc(b.name)}</b> ({esc(state)}){error}"
                      f"<pre>{_clip(b.output)}</pre>", "" if b.ok else "error")
        elif isinstance(b, OperatorData):
            self.interventions.append((ev, b))
            args = b.action_args()
            detail = f"<pre>{_clip(_args_text(args))}</pre>" if args else ""
            why = f" &mdash; {esc(b.reason)}" if b.reason else ""
            self._row(ev, ev.kind, f"<b>{esc(b.operator)}</b>{why}{detail}", "operator")
        elif type(b) is ScoreData:
            self.scores.append((ev, b))
            value = "none" if b.value is None else _num(b.value)
            err = f" &mdash; {esc(b.error)}" if b.error else ""
            self._row(ev, "score", f"{esc(b.metric)} = {esc(value)}"
                      f"{' (final)' if b.final else ''}{err}", "score")
        else:
            cls = "error" if ev.kind in ("agent.error", "integrity.flag") or (
                ev.kind == "run.ended" and ev.data.get("status") != "succeeded") else ""
            if ev.kind.startswith("operator.") or ev.kind == "control.ack":
                cls = "operator"
            data = {k: v for k, v in ev.data.items() if v not in (None, "", [], {})}
            self._row(ev, ev.kind, f"<pre>{_clip(_args_text(data))}</pre>" if data else "", cls)


def _args_text(args: dict[str, Any]) -> str:
    """Arguments for reading: a lone long string (a command, a file) shown as itself."""
    parts = []
    for key, value in args.items():
        if isinstance(value, str) and ("\n" in value or len(value) > 60):
            parts.append(f"{key}:\n{value}")
        else:
            parts.append(f"{key}: {json.dumps(value, ensure_ascii=False, default=str)}")
    return "\n".join(parts)


def _header(record: RunRecord, page: _Page) -> str:
    row, c = record.row, record.created
    status = record.status
    elapsed = row.get("active_s")
    score = (f"{row.get('score_metric') or ''} {_num(row['score'])}"
             if row.get("score") is not None else "none")
    items = [("task", c.task or row.get("task")), ("agent", c.agent or row.get("agent")),
             ("model", c.model or row.get("model")), ("scaffold", c.scaffold or row.get("scaffold")),
             ("scale", c.scale or row.get("scale")), ("runner", c.runner or row.get("runner")),
             ("campaign", c.campaign), ("created", _when(row.get("created_ts"))),
             ("started", _when(row.get("started_ts"))), ("ended", _when(row.get("ended_ts"))),
             ("time on the clock", f"{elapsed:.1f} s" if isinstance(elapsed, int | float) else None),
             ("steps", row.get("steps")), ("limits", ", ".join(f"{k}={_num(v)}" for k, v in c.limits.items())),
             ("tokens in/out", f"{page.tokens[0]} / {page.tokens[1]}"),
             ("cost", f"${page.cost:.4f}"), ("score", score), ("integrity flags", row.get("flags")),
             ("reason", row.get("reason"))]
    kv = "".join(f"<div><span>{esc(k)}</span> {esc(v)}</div>" for k, v in items
                 if v not in (None, ""))
    return (f"<header><h1>{esc(record.run)} <span class=\"status s-{esc(status)}\">{esc(status)}"
            f"</span></h1><div class=\"kv\">{kv}</div></header>")


def html_report(record: RunRecord, max_timeline: int = MAX_TIMELINE) -> str:
    """The run as one HTML document (a str), self-contained."""
    page = _Page(record, max_timeline)
    page.feed(record.events)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
             f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
             f"<title>{esc(record.run)} - MLRB run</title><style>{CSS}</style></head><body>",
             _header(record, page)]
    parts.append("<section id=\"scores\"><h2>Scores</h2>")
    if page.scores:
        parts.append("<table><tr><th>time</th><th>metric</th><th>value</th><th>final</th>"
                     "<th>other metrics</th><th>error</th></tr>")
        for ev, s in page.scores:
            others = ", ".join(f"{k}={v}" for k, v in s.metrics.items())
            parts.append(f"<tr><td class=\"t\">{esc(_when(ev.ts))}</td><td>{esc(s.metric)}</td>"
                         f"<td>{esc('none' if s.value is None else _num(s.value))}</td>"
                         f"<td>{'yes' if s.final else 'no'}</td><td>{esc(others)}</td>"
                         f"<td>{esc(s.error or '')}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>Not scored.</p>")
    parts.append("</section>")
    for title, table in (("Metrics", page.metrics), ("GPU and sandbox", page.telemetry)):
        if not table and title != "Metrics":
            continue
        parts.append(f"<section id=\"{'metrics' if title == 'Metrics' else 'telemetry'}\">"
                     f"<h2>{title}</h2><div class=\"charts\">")
        parts += [chart_svg(s) for s in table.values() if s.seen]
        if not table:
            parts.append("<p>No metrics were logged.</p>")
        parts.append("</div></section>")
    if len(page.metrics) + len(page.telemetry) >= MAX_SERIES:
        parts.append(f"<section><p class=\"note\">Only the first {MAX_SERIES} series are drawn."
                     "</p></section>")
    parts.append("<section id=\"interventions\"><h2>Operator interventions</h2>")
    if page.interventions:
        parts.append("<table><tr><th>time</th><th>action</th><th>operator</th><th>reason</th>"
                     "<th>detail</th></tr>")
        for ev, op in page.interventions:
            parts.append(f"<tr><td class=\"t\">{esc(_when(ev.ts))}</td><td>{esc(ev.kind)}</td>"
                         f"<td>{esc(op.operator)}</td><td>{esc(op.reason)}</td>"
                         f"<td><pre>{_clip(_args_text(op.action_args()))}</pre></td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append("</section><section id=\"timeline\"><h2>Timeline</h2>")
    shown = len(page.rows) + len(page.tail)
    if page.total_rows > shown:
        parts.append(f"<p class=\"note\" id=\"timeline-cut\">{page.total_rows} entries: the first "
                     f"{len(page.rows)} and the last {len(page.tail)} are shown; "
                     f"{page.total_rows - shown} in between are left out (`mlrb export "
                     f"{esc(record.run)} --format jsonl` has every event).</p>")
    parts.append("<table><tr><th>time</th><th>kind</th><th>what</th></tr>")
    parts += page.rows
    if page.tail:
        parts.append(f"<tr><td colspan=\"3\" class=\"note\">&hellip; {page.total_rows - shown} "
                     "entries left out &hellip;</td></tr>")
        parts += page.tail
    parts.append("</table></section>")
    parts.append(f"<section><p class=\"t\">{page.count} events; exported from the "
                 "MLRB journal.</p></section></body></html>")
    return "".join(parts)
