"""The results screen's chart: one task, a line per agent row, each run's score a dot on a
shared axis and the paper's figure marked on it, drawn as Rich text to the widget's width."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from runner.results import PaperFigure, ResultRow, method_text, paper_figures, paper_match

RUN = "●"
PAPER = "┃"
MIN_TRACK = 16  # narrower than this and the dots would say nothing


def _label(r: ResultRow) -> str:
    label = f"{r.agent}:{r.model}" if r.model else r.agent
    return label + (f" [{r.scaffold}]" if r.scaffold and r.scaffold != "mlrb" else "")


def _key(r: ResultRow) -> tuple[str, str, str | None, str | None]:
    return r.task, r.agent, r.model, r.scaffold


def _axis(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 if hi > lo else max(abs(hi) * 0.1, 0.05)
    return lo - pad, hi + pad


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[:max(0, n - 1)] + "…"


def chart_text(task: str | None, rows: Sequence[ResultRow], selected: ResultRow | None,
               width: int) -> Text:
    """The chart of `task`'s rows at `width` columns, the selected row's line picked out."""
    if task is None:
        return Text("No ended runs yet: each task's chart appears here once its runs end "
                    "(mlrb campaign run, or mlrb demo).", style="dim")
    mine = [r for r in rows if r.task == task]
    figures = paper_figures().get(task, {})
    out = Text()
    metric = next((r.metric for r in mine if r.metric), None) or "score"
    out.append(f" {task}", style="bold")
    out.append(f" · {metric}   ")
    out.append(f"{RUN} a run's score", style="green")
    out.append(f"  {PAPER} the paper's figure", style="yellow")
    out.append("  ✗ runs with no score\n" if width >= 100 else "  ✗ no score\n", style="dim")
    scores = [s for r in mine for s in r.run_scores if s is not None]
    papers = [r.paper for r in mine if r.paper is not None]
    if not scores and not papers:
        out.append(" No scored runs yet", style="dim")
        out.append(", and the paper reports no figure for this task.\n" if not figures else ".\n",
                   style="dim")
        _unmatched(out, figures, mine)
        return out
    label_w = max(8, min(40, width // 4, max((len(_label(r)) for r in mine), default=8)))
    summaries = [_summary(r) for r in mine]
    summary_w = max((len(t) for t in summaries), default=0)
    track = max(MIN_TRACK, width - 2 - label_w - summary_w)
    lo, hi = _axis(scores + papers)

    def col(v: float) -> int:
        return max(0, min(track - 1, round((v - lo) / (hi - lo) * (track - 1))))

    ticks = [" "] * track
    marks = [(0, f"{lo:.2f}"), (track // 2 - 2, f"{(lo + hi) / 2:.2f}"),
             (track - len(f"{hi:.2f}"), f"{hi:.2f}")]
    for at, label in marks:
        for i, ch in enumerate(label):
            if 0 <= at + i < track:
                ticks[at + i] = ch
    out.append(" " * (label_w + 2) + "".join(ticks) + "\n", style="dim")
    for r, summary in zip(mine, summaries, strict=True):
        picked = selected is not None and _key(r) == _key(selected)
        out.append(" ")
        out.append(f"{_cut(_label(r), label_w):<{label_w}}", style="bold reverse" if picked else "bold")
        out.append(" ")
        cells: list[tuple[str, str]] = [("─", "dim")] * track
        if r.paper is not None:
            cells[col(r.paper)] = (PAPER, "bold yellow")
        counts: dict[int, int] = {}
        for s, status in zip(r.run_scores, r.run_statuses, strict=False):
            if s is not None:
                c = col(s)
                counts[c] = counts.get(c, 0) + 1
                style = "bold green" if status == "succeeded" else "red"
                n = counts[c]
                cells[c] = (RUN if n == 1 else (str(n) if n < 10 else "+"), style)
        for ch, style in cells:
            out.append(ch, style=style)
        out.append(summary, style="yellow" if picked else "")
        out.append("\n")
    _unmatched(out, figures, mine)
    if selected is not None and selected.task == task and any(_key(r) == _key(selected) for r in mine):
        out.append(" scored by: ", style="bold")
        if selected.methods:
            out.append(" | ".join(method_text(m) for m in selected.methods))
        else:
            out.append("not stated by these runs' scorer", style="dim")
    return out


def _summary(r: ResultRow) -> str:
    """What a chart line ends with: mean ± std, the paper's figure, runs with no score."""
    mean = "—" if r.mean is None else f"{r.mean:.3f}"
    std = f"±{r.std:.3f}" if r.std is not None else ""
    paper = f"paper {r.paper:.3f}" if r.paper is not None else "paper —"
    unscored = sum(1 for s in r.run_scores if s is None)
    return f" {mean}{std} {paper}" + (f" {unscored}✗" if unscored else "")


def _unmatched(out: Text, figures: dict[str, PaperFigure], mine: Sequence[ResultRow]) -> None:
    """The paper's figures for agents no row here matches, so the paper's side is never hidden."""
    matched = {m[0] for r in mine if (m := paper_match(r.task, r.model)) is not None}
    rest = [(name, f) for name, f in figures.items() if name not in matched]
    if rest:
        out.append(" paper, no runs here: ", style="dim")
        out.append(", ".join(f"{name} {f.value:.3f} ({f.stat})" for name, f in rest) + "\n",
                   style="yellow")


class ResultsChart(Widget):
    """Follows the results table's highlighted row: that row's task, its line picked out."""

    DEFAULT_CSS = """
    ResultsChart { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._rows: list[ResultRow] = []
        self._selected: ResultRow | None = None

    @property
    def shown_task(self) -> str | None:
        """The task the chart shows: the selected row's, else the first row's."""
        if self._selected is not None:
            return self._selected.task
        return self._rows[0].task if self._rows else None

    def show(self, rows: Sequence[ResultRow], selected: ResultRow | None) -> None:
        self._rows, self._selected = list(rows), selected
        self.refresh(layout=True)

    def render(self) -> Text:
        return chart_text(self.shown_task, self._rows, self._selected, self.content_size.width or 80)
