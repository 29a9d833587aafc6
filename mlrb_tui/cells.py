"""How a run's row reads in a table cell: plain Rich text from a runs row, no widgets."""

from __future__ import annotations

from typing import Any

from rich.text import Text

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
    cpu = row.get("cpu_pct")
    return Text("—", style="dim") if not isinstance(cpu, (int, float)) else Text(f"{cpu:.0f}%")


def mem_text(row: dict[str, Any]) -> Text:
    used, limit = row.get("mem_bytes"), row.get("mem_limit")
    if used is None:
        return Text("—", style="dim")
    text = Text(fmt_bytes(used))
    if limit:
        text.append(f"/{fmt_bytes(limit)}", style="dim")
    return text


def gpu_text(row: dict[str, Any]) -> Text:
    util = row.get("gpu_util")
    if not isinstance(util, (int, float)):
        return Text("—", style="dim")
    text = Text(f"{util:.0f}%")
    if row.get("gpu_mem_used") is not None:
        text.append(f" {fmt_bytes(row['gpu_mem_used'])}", style="dim")
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


def flags_text(row: dict[str, Any]) -> Text:
    text = Text()
    if row.get("isolated") == 0:
        text.append("local ", style="bold red")
    flags = int(row.get("flags") or 0)
    if flags:
        text.append(f"⚑{flags}", style="bold red")
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
    ("gpu", "GPU", 10),
    ("score", "score", 7),
    ("cost", "tok/cost", 12),
    ("flags", "flags", 8),
)


def row_cells(row: dict[str, Any], now: float) -> tuple[Text | str, ...]:
    return (
        Text(one_line(row.get("run", "?"), 64), style="bold"),
        one_line(row.get("task") or "—", 22),
        one_line(row.get("agent") or "—", 16),
        status_text(row.get("status")),
        elapsed_text(row, now),
        metric_text(row),
        cpu_text(row),
        mem_text(row),
        gpu_text(row),
        score_text(row),
        cost_text(row),
        flags_text(row),
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
    if column == "gpu":
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
