"""The run view's header: who, what, status, time on the clock, and where it runs."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from mlrb_tui.cells import cpu_text, elapsed_text, gpu_text, mem_text, metric_text, status_text
from mlrb_tui.signals import RunSignals, sparkline
from mlrb_tui.state import one_line
from runner.events import TERMINAL_STATUSES

NOT_ISOLATED = "local sandbox — NOT isolated"


def header_text(row: dict[str, Any], now: float, sig: RunSignals | None = None) -> Text:
    text = Text()
    text.append(one_line(row.get("run", "?"), 64), style="bold")
    text.append("  ")
    text.append(one_line(row.get("task") or "—", 40), style="bold cyan")
    text.append(f"  {one_line(row.get('agent') or '—', 20)}")
    if row.get("model"):
        text.append(f" ({one_line(row['model'], 40)})", style="dim")
    text.append("   ")
    text.append_text(status_text(row.get("status")))
    text.append("   ")
    text.append_text(elapsed_text(row, now))
    text.append(f"   step {row.get('steps') or 0}", style="dim")
    if sig is not None and sig.catching_up:
        text.append("   ↻ catching up: repairing missed events", style="bold cyan")
    live = row.get("status") not in TERMINAL_STATUSES
    if sig is not None and live:
        warn = sig.warning_text()
        if warn:
            text.append(f"   ⚠ {warn} of its limit used", style="bold black on yellow")
        if sig.approval_mode:
            text.append("   approval mode", style="bold yellow")
        if sig.pending:
            text.append(f"   ✋ {len(sig.pending)} waiting for approval", style="bold yellow reverse")
    text.append("\n")
    sandbox = row.get("sandbox")
    if row.get("isolated") == 0:
        text.append(f" ⚠ {NOT_ISOLATED} ", style="bold white on red")
    elif sandbox:
        text.append(f"sandbox: {one_line(sandbox, 20)} (isolated)", style="dim")
    else:
        text.append("sandbox: not started", style="dim")
    text.append("   ")
    text.append_text(metric_text(row))
    text.append("   GPU ", style="dim")
    text.append_text(gpu_text(row))
    if sig is not None and sig.gpu:
        text.append(" " + sparkline(list(sig.gpu), 16, 100.0), style="green")
    if row.get("cpu_pct") is not None:
        text.append("   CPU ", style="dim")
        text.append_text(cpu_text(row))
        if sig is not None and sig.cpu:
            top = sig.cpu_limit * 100 if sig.cpu_limit else None
            text.append(" " + sparkline(list(sig.cpu), 12, top), style="cyan")
    if row.get("mem_bytes") is not None:
        text.append("   mem ", style="dim")
        text.append_text(mem_text(row))
        if sig is not None and sig.mem:
            text.append(" " + sparkline(list(sig.mem), 12, sig.mem_limit), style="magenta")
    tokens = int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)
    if tokens:
        text.append(f"   {tokens:,} tok ${float(row.get('cost_usd') or 0):.3f}", style="dim")
    if row.get("score") is not None:
        text.append(f"   score {row['score']:.4g}", style="bold green")
    if row.get("flags"):
        text.append(f"   ⚑ {row['flags']} integrity flag(s)", style="bold red")
    if row.get("reason") and row.get("ended_ts"):
        text.append(f"\nended: {one_line(row['reason'], 160)}", style="dim")
    return text


class RunHeader(Static):
    def show(self, row: dict[str, Any], now: float, sig: RunSignals | None = None) -> None:
        self.update(header_text(row, now, sig))
