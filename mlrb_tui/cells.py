"""How a run's row reads in a table cell: plain Rich text from a runs row, no widgets."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from mlrb_tui.signals import RunSignals, sparkline
from mlrb_tui.state import elapsed_of, fmt_bytes, fmt_duration, one_line

STATUS_STYLE = {
    "queued": "dim",
    "running": "bold green",
    "held": "bold yellow",
    "frozen": "bold cyan",
    "succeeded": "green",
    "failed": "red",
    "killed": "bold red",
    "limit": "magenta",
}
STATUS_ICON = {
    "queued": "·", "running": "▶", "held": "‖", "frozen": "❄", "succeeded": "✔",
    "failed": "✘", "killed": "✘", "limit": "⏱",
}


def status_text(status: object) -> Text:
    s = one_line(status or "?", 12)
    return Text(f"{STATUS_ICON.get(s, '?')} {s}", style=STATUS_STYLE.get(s, ""))


def elapsed_text(row: dict[str, Any], now: float) -> Text:
    used = elapsed_of(row, now)
    budget = row.get("budget_s")
    text = Text(fmt_duration(used))
    if isinstance(budget, (int, float)) and budget > 0:
        frac = used / budget
        style = "red" if frac >= 0.95 else "yellow" if frac >= 0.8 else "dim"
        text.append(f"/{fmt_duration(budget)}", style=style)
    return text


def metric_text(row: dict[str, Any]) -> Text:
    name, value, step = row.get("metric_name"), row.get("metric_value"), row.get("metric_step")
    if name is None or not isinstance(value, (int, float)):
        return Text("—", style="dim")
    text = Text(f"{one_line(name, 16)}=", style="dim")
    text.append(f"{value:.4g}", style="bold")
    if step is not None:
        text.append(f"@{step}", style="dim")
    return text


def cpu_text(row: dict[str, Any]) -> Text:
    """Sandbox CPU in percent of one core, against its limit in the same unit."""
    cpu, limit = row.get("cpu_pct"), row.get("cpu_limit")
    if not isinstance(cpu, (int, float)):
        return Text("—", style="dim")
    text = Text(f"{cpu:.0f}%")
    if isinstance(limit, (int, float)) and limit > 0:
        frac = cpu / (limit * 100)
        text.append(f"/{limit * 100:.0f}%", style="yellow" if frac >= 0.9 else "dim")
    return text


def mem_text(row: dict[str, Any]) -> Text:
    used, limit = row.get("mem_bytes"), row.get("mem_limit")
    if used is None:
        return Text("—", style="dim")
    near = isinstance(limit, (int, float)) and limit > 0 and used / limit >= 0.9
    text = Text(fmt_bytes(used), style="bold yellow" if near else "")
    if limit:
        text.append(f"/{fmt_bytes(limit)}", style="dim")
    return text


NO_GPU = "— no GPU"


def gpu_text(row: dict[str, Any]) -> Text:
    """GPU utilisation and memory used/total; a dim dash where the run has no GPU samples."""
    util = row.get("gpu_util")
    if not isinstance(util, (int, float)):
        return Text(NO_GPU, style="dim")
    text = Text(f"{util:.0f}%", style="bold" if util >= 50 else "yellow")
    used, total = row.get("gpu_mem_used"), row.get("gpu_mem_total")
    if used is not None:
        text.append(f" {fmt_bytes(used)}")
        if total:
            text.append(f"/{fmt_bytes(total)}", style="dim")
    return text


def trend_text(sig: RunSignals | None, width: int = 10) -> Text:
    """Sparklines of the last samples: GPU util (else CPU) and memory against its limit."""
    if sig is None or not (sig.gpu or sig.cpu or sig.mem):
        return Text("—", style="dim")
    text = Text()
    if sig.gpu:
        text.append("g", style="dim")
        text.append(sparkline(list(sig.gpu), width, 100.0), style="green")
    elif sig.cpu:
        text.append("c", style="dim")
        top = sig.cpu_limit * 100 if sig.cpu_limit else None
        text.append(sparkline(list(sig.cpu), width, top), style="cyan")
    if sig.mem:
        text.append(" m", style="dim")
        text.append(sparkline(list(sig.mem), width // 2, sig.mem_limit), style="magenta")
    return text


def score_text(row: dict[str, Any]) -> Text:
    score = row.get("score")
    return Text("—", style="dim") if not isinstance(score, (int, float)) else Text(f"{score:.4g}",
                                                                                   style="bold")


def cost_text(row: dict[str, Any]) -> Text:
    tokens = int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)
    if not tokens:
        return Text("—", style="dim")
    k = f"{tokens / 1000:.1f}k" if tokens >= 1000 else str(tokens)
    return Text(f"{k} ${float(row.get('cost_usd') or 0):.2f}")


def flags_text(row: dict[str, Any], sig: RunSignals | None = None) -> Text:
    """Integrity flags, a local (unisolated) sandbox, calls awaiting approval, limit warnings."""
    text = Text()
    if row.get("isolated") == 0:
        text.append("local ", style="bold red")
    flags = int(row.get("flags") or 0)
    if flags:
        text.append(f"⚑{flags} ", style="bold red")
    if sig is not None and row.get("status") not in ("succeeded", "failed", "killed", "limit"):
        if sig.pending:
            text.append(f"✋{len(sig.pending)} ", style="bold yellow reverse")
        warn = sig.warning_text()
        if warn:
            text.append(f"⏱{warn}", style="bold yellow")
    text.rstrip()
    return text


def elapsed_cell(row: dict[str, Any], now: float, sig: RunSignals | None) -> Text:
    text = elapsed_text(row, now)
    if sig is not None and sig.limit_warnings and row.get("status") in ("running", "held", "frozen"):
        text.append(" ⚠", style="bold yellow")
    return text


# (column key, header, width, cell function); the key is also the sort key
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("run", "run", 18),
    ("task", "task", 20),
    ("agent", "agent", 9),
    ("status", "status", 11),
    ("time", "elapsed/budget", 17),
    ("metric", "latest metric", 24),
    ("cpu", "CPU", 5),
    ("mem", "memory", 13),
    ("gpu", "GPU util mem", 16),
    ("trend", "trend", 17),
    ("score", "score", 7),
    ("cost", "tok/cost", 12),
    ("flags", "flags", 8),
)


def row_cells(row: dict[str, Any], now: float,
              sig: RunSignals | None = None) -> tuple[Text | str, ...]:
    return (
        Text(one_line(row.get("run", "?"), 64), style="bold"),
        one_line(row.get("task") or "—", 22),
        one_line(row.get("agent") or "—", 16),
        status_text(row.get("status")),
        elapsed_cell(row, now, sig),
        metric_text(row),
        cpu_text(row),
        mem_text(row),
        gpu_text(row),
        trend_text(sig),
        score_text(row),
        cost_text(row),
        flags_text(row, sig),
    )


def sort_value(row: dict[str, Any], column: str, now: float) -> Any:
    """A comparable value for sorting by `column` (missing values sort last)."""
    def num(x: object) -> tuple[int, float]:
        return (0, float(x)) if isinstance(x, (int, float)) else (1, 0.0)

    if column == "time":
        return num(elapsed_of(row, now))
    if column == "metric":
        return num(row.get("metric_value"))
    if column == "cpu":
        return num(row.get("cpu_pct"))
    if column == "mem":
        return num(row.get("mem_bytes"))
    if column in ("gpu", "trend"):
        return num(row.get("gpu_util"))
    if column == "score":
        return num(row.get("score"))
    if column == "cost":
        return num(row.get("cost_usd"))
    if column == "flags":
        return num(row.get("flags"))
    if column == "status":
        order = ("running", "held", "frozen", "queued", "limit", "failed", "killed", "succeeded")
        s = row.get("status")
        return (order.index(s) if s in order else len(order), "")
    if column == "run":
        return (0, str(row.get("created_ts") or 0), str(row.get("run")))
    return (0, str(row.get(column) or ""))
