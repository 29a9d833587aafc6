"""How a run's row reads in a table cell: plain Rich text from a runs row, no widgets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from mlrb_tui.signals import CATCHING_UP, RunSignals, is_number, sparkline
from mlrb_tui.state import elapsed_of, fmt_bytes, fmt_duration, one_line
from runner.events import LIVE_STATUSES, STATUS_ORDER, TERMINAL_STATUSES

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


def metric_text(row: dict[str, Any], name_width: int = 16) -> Text:
    name, value, step = row.get("metric_name"), row.get("metric_value"), row.get("metric_step")
    if name is None or not isinstance(value, (int, float)):
        return Text("—", style="dim")
    text = Text(f"{one_line(name, name_width)}=", style="dim")
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


def score_text(row: dict[str, Any]) -> Text:
    score = row.get("score")
    return Text("—", style="dim") if not isinstance(score, (int, float)) else Text(f"{score:.4g}",
                                                                                   style="bold")


def budget_short(seconds: float) -> str:
    """A budget in few characters: 1h, 90m, 1:30:00 when neither fits."""
    s = int(seconds)
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0 and s < 6000:
        return f"{s // 60}m"
    return fmt_duration(s)


def fmt_gib(n: float) -> str:
    g = n / (1 << 30)
    return f"{g:.0f}" if g >= 10 else f"{g:.1f}"


# Values that flicker are kept to the step the cell shows (or a coarser one), so a change the
# operator cannot read costs no repaint: over SSH every repainted cell is bytes on the link.
GPU_STEP = 2  # percent: an idle-to-busy swing still reads, a one-point jitter does not


def step_of_elapsed(seconds: float) -> int:
    """The step a running run's clock moves in: seconds at first, coarser as the run ages."""
    return 1 if seconds < 60 else 5 if seconds < 3600 else 10


def quantise_elapsed(seconds: float) -> int:
    step = step_of_elapsed(seconds)
    return int(seconds) // step * step


def quantise_bytes(n: float) -> float:
    """A byte count at the precision it is shown with (a tenth of its unit, or whole GiB from
    10 GiB on)."""
    gib, mib = float(1 << 30), float(1 << 20)
    step = gib if n >= 10 * gib else gib / 10 if n >= gib else mib / 10 if n >= mib else 1024.0
    return round(n / step) * step


def quantise_pct(pct: float, step: int = GPU_STEP) -> int:
    return int(round(pct / step) * step)


# The dashboard's cells. Each column has a value function (a plain hashable tuple, cheap to
# compute and compare on every repaint) and a render function (the Rich Text, built only when
# the value changed). Widths are content widths; the table adds one column of gap.
Value = tuple[Any, ...]


def _v_run(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (row.get("run", "?"),)


def _r_run(v: Value) -> Text:
    return Text(one_line(v[0], 64), style="bold")


def _v_task(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (row.get("task"),)


def _r_plain(v: Value) -> Text:
    return Text(one_line(v[0] or "—", 40))


def _v_agent(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (row.get("agent"),)


def _v_campaign(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (row.get("campaign"),)


def _v_status(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (row.get("status"),)


def _r_status(v: Value) -> Text:
    return status_text(v[0])


def _v_time(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    warn = bool(sig is not None and sig.limit_warnings
                and row.get("status") in LIVE_STATUSES)
    budget = row.get("budget_s")
    used = elapsed_of(row, now)
    # only a running clock moves: a held or ended one reads to the second
    shown = quantise_elapsed(used) if row.get("status") == "running" else int(used)
    return (shown, budget if is_number(budget) else None, warn)


def _r_time(v: Value) -> Text:
    used, budget, warn = v
    text = Text(fmt_duration(used))
    if budget is not None and budget > 0:
        frac = used / budget
        style = "red" if frac >= 0.95 else "yellow" if frac >= 0.8 else "dim"
        text.append(f"/{budget_short(budget)}", style=style)
    if warn:
        text.append(" ⚠", style="bold yellow")
    return text


def _v_metric(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (row.get("metric_name"), row.get("metric_value"), row.get("metric_step"))


def _r_metric(v: Value) -> Text:
    return metric_text({"metric_name": v[0], "metric_value": v[1], "metric_step": v[2]}, 8)


def _v_res(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    cpu, mem = row.get("cpu_pct"), row.get("mem_bytes")
    # the cell shows tenths of a core
    return (round(cpu / 10) * 10 if is_number(cpu) else None, row.get("cpu_limit"),
            quantise_bytes(mem) if is_number(mem) else mem, row.get("mem_limit"))


def _r_res(v: Value) -> Text:
    """Sandbox CPU (in cores) and memory against the run's limits, in one cell: `2.1/4c
    5.2/16G`; yellow when within 10% of a limit."""
    cpu, cpu_limit, mem, mem_limit = v
    text = Text()
    if cpu is None:
        text.append("—", style="dim")
    else:
        capped = is_number(cpu_limit) and cpu_limit > 0
        near = capped and cpu / (cpu_limit * 100) >= 0.9
        text.append(f"{cpu / 100:.1f}", style="yellow" if near else "")
        text.append(f"/{cpu_limit:g}c" if capped else "c", style="dim")
    if is_number(mem):
        capped = is_number(mem_limit) and mem_limit > 0
        near = capped and mem / mem_limit >= 0.9
        if capped:
            text.append(f" {fmt_gib(mem)}", style="bold yellow" if near else "")
            text.append(f"/{fmt_gib(mem_limit)}G", style="dim")
        else:
            text.append(f" {fmt_bytes(mem)}")
    return text


def _v_gpu(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    util, used = row.get("gpu_util"), row.get("gpu_mem_used")
    return (quantise_pct(util) if is_number(util) else None,
            quantise_bytes(used) if is_number(used) else used, row.get("gpu_mem_total"))


def _r_gpu(v: Value) -> Text:
    """GPU utilisation and memory used/total in GiB; a dim dash where the run has no GPU."""
    util, used, total = v
    if util is None:
        return Text(NO_GPU, style="dim")
    text = Text(f"{util}%", style="bold" if util >= 50 else "yellow")
    if is_number(used):
        text.append(f" {fmt_gib(used)}")
        text.append(f"/{fmt_gib(total)}G" if is_number(total) and total else "G", style="dim")
    return text


TREND_WIDTH, TREND_MEM_WIDTH = 6, 2


def _v_trend(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    if sig is None:
        return ()
    if sig.gpu:
        head: Value = ("g", tuple(list(sig.gpu)[-TREND_WIDTH:]), 100.0)
    elif sig.cpu:
        head = ("c", tuple(list(sig.cpu)[-TREND_WIDTH:]),
                sig.cpu_limit * 100 if sig.cpu_limit else None)
    else:
        head = ("", (), None)
    return (*head, tuple(list(sig.mem)[-TREND_MEM_WIDTH:]), sig.mem_limit)


def _r_trend(v: Value) -> Text:
    if not v or not (v[1] or v[3]):
        return Text("—", style="dim")
    tag, series, top, mem, mem_top = v
    text = Text()
    if series:
        text.append(tag, style="dim")
        text.append(sparkline(list(series), TREND_WIDTH, top), style="green" if tag == "g" else "cyan")
    if mem:
        text.append("m", style="dim")
        text.append(sparkline(list(mem), TREND_MEM_WIDTH, mem_top), style="magenta")
    return text


def _v_score(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (row.get("score"),)


def _r_score(v: Value) -> Text:
    return score_text({"score": v[0]})


def _v_cost(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    return (int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0),
            float(row.get("cost_usd") or 0))


def _r_cost(v: Value) -> Text:
    tokens, cost = v
    if not tokens:
        return Text("—", style="dim")
    k = f"{tokens / 1000:.1f}k" if tokens < 100_000 else f"{tokens / 1000:.0f}k"
    return Text(f"{k if tokens >= 1000 else tokens} ${cost:.2f}")


def _v_flags(row: dict[str, Any], now: float, sig: RunSignals | None) -> Value:
    live = sig is not None and row.get("status") not in TERMINAL_STATUSES
    return (row.get("isolated") == 0, int(row.get("flags") or 0),
            len(sig.pending) if live and sig is not None else 0,
            sig.warning_text() if live and sig is not None else "",
            sig.alarm_text() if live and sig is not None else "",
            # an ended run too: its row may be behind until the gap is filled
            sig is not None and sig.catching_up)


def _r_flags(v: Value) -> Text:
    local, flags, pending, warn, alarm, catching_up = v
    text = Text()
    if local:
        text.append("local ", style="bold red")
    if flags:
        text.append(f"⚑{flags} ", style="bold red")
    if pending:
        text.append(f"✋{pending} ", style="bold yellow reverse")
    if warn:
        text.append(f"⏱{warn} ", style="bold yellow")
    if alarm:
        text.append(f"⚠{alarm} ", style="bold magenta")
    if catching_up:
        text.append(CATCHING_UP, style="bold cyan")
    text.rstrip()
    return text


@dataclass(frozen=True, slots=True)
class Column:
    key: str  # also the sort key
    header: str
    width: int
    value: Callable[[dict[str, Any], float, RunSignals | None], Value]
    render: Callable[[Value], Text]


# fits a 150-column terminal: widths + one gap each + the scrollbar
COLUMNS: tuple[Column, ...] = (
    Column("run", "run", 14, _v_run, _r_run),
    Column("task", "task", 11, _v_task, _r_plain),
    Column("agent", "agent", 8, _v_agent, _r_plain),
    Column("status", "status", 11, _v_status, _r_status),
    Column("time", "time/budget", 12, _v_time, _r_time),
    Column("metric", "metric", 14, _v_metric, _r_metric),
    Column("res", "cpu mem /lim", 14, _v_res, _r_res),
    Column("gpu", "GPU", 10, _v_gpu, _r_gpu),
    Column("trend", "trend", 10, _v_trend, _r_trend),
    Column("score", "score", 6, _v_score, _r_score),
    Column("cost", "tok/$", 11, _v_cost, _r_cost),
    Column("flags", "flags", 15, _v_flags, _r_flags),
)
CAMPAIGN_COLUMN = Column("campaign", "campaign", 12, _v_campaign, _r_plain)
# shown once any run belongs to a campaign: the table scrolls sideways for it
COLUMNS_WITH_CAMPAIGN: tuple[Column, ...] = (*COLUMNS[:3], CAMPAIGN_COLUMN, *COLUMNS[3:])


def fit(text: Text, width: int) -> Text:
    """A cell cut to its column (an ellipsis marks the cut), so a long value never spills."""
    if text.cell_len > width:
        text = text.copy()
        text.truncate(width, overflow="ellipsis")
    return text


def row_values(row: dict[str, Any], now: float, sig: RunSignals | None = None,
               columns: tuple[Column, ...] = COLUMNS) -> tuple[Value, ...]:
    return tuple(c.value(row, now, sig) for c in columns)


def sort_value(row: dict[str, Any], column: str, now: float) -> Any:
    """A comparable value for sorting by `column`: `(0, value...)`, or `(1, ...)` where the
    row has none (those sort last either way)."""
    def num(x: object) -> tuple[int, float]:
        return (0, float(x)) if isinstance(x, (int, float)) else (1, 0.0)

    if column == "time":
        return num(elapsed_of(row, now))
    if column == "metric":
        return num(row.get("metric_value"))
    if column == "res":
        return num(row.get("cpu_pct"))
    if column in ("gpu", "trend"):
        return num(row.get("gpu_util"))
    if column == "score":
        return num(row.get("score"))
    if column == "cost":
        return num(row.get("cost_usd"))
    if column == "flags":
        return num(row.get("flags"))
    if column == "status":
        s = row.get("status")
        return (0, STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER))
    if column == "run":
        return (0, str(row.get("created_ts") or 0), str(row.get("run")))
    if column == "campaign":  # grouped by campaign, each group in creation order
        name = row.get("campaign")
        return (0, str(name), float(row.get("created_ts") or 0), str(row.get("run"))) if name else (1, "")
    value = row.get(column)
    return (0, str(value)) if value not in (None, "") else (1, "")
