"""Results: one row per task × agent (model and scaffold), derived from the runs table.

Scores are the runs' final scores; mean, std and best are over the runs that succeeded (as
the paper counts them), best by the task's direction. `paper` is the figure the MLRB paper
reports for that task and model (`tasks/paper_results.toml`), or None where it reports none.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tasks.api import TASKS_ROOT, TaskSpecError, load_task

PAPER_FILE = TASKS_ROOT / "paper_results.toml"
# a provider's model id names the paper's model when all it adds is a date or `latest`
_MODEL_SUFFIX = re.compile(r"^(-\d{4}-?\d{2}-?\d{2}|-latest)?$")


@dataclass(frozen=True, slots=True)
class PaperFigure:
    value: float
    stat: str  # mean (over the succeeded runs) or best
    runs: int | None = None
    succeeded: int | None = None


@dataclass(slots=True)
class ResultRow:
    task: str
    agent: str
    model: str | None
    scaffold: str | None
    metric: str | None
    runs: int
    succeeded: int
    mean: float | None
    std: float | None
    best: float | None
    cost_usd: float  # mean per run
    tokens: float  # mean per run, input + output
    time_s: float  # mean time on the clock per run
    flags: int  # integrity flags over all the runs
    paper: float | None
    paper_stat: str | None
    run_ids: tuple[str, ...] = ()
    run_scores: tuple[float | None, ...] = ()  # each run's score, in run_ids' order
    run_statuses: tuple[str, ...] = ()  # each run's end status, in run_ids' order
    methods: tuple[dict[str, Any], ...] = ()  # the distinct ways the scored runs were scored

    @property
    def method(self) -> dict[str, Any] | None:
        """How every scored run of the row was scored, where they all agree."""
        return self.methods[0] if len(self.methods) == 1 else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("run_ids", "run_scores", "run_statuses", "methods"):
            d[key] = list(d[key])
        d["method"] = self.method
        return d


def _norm(model: str) -> str:
    return model.strip().lower().replace(".", "-").replace("_", "-")


@cache
def paper_figures(path: Path = PAPER_FILE) -> dict[str, dict[str, PaperFigure]]:
    """task -> paper model name -> figure."""
    raw = tomllib.loads(path.read_text())
    out: dict[str, dict[str, PaperFigure]] = {}
    for task, agents in raw.items():
        if not isinstance(agents, dict):
            continue  # `source`
        out[task] = {name: PaperFigure(float(f["value"]), str(f["stat"]), f.get("runs"), f.get("succeeded"))
                     for name, f in agents.items() if isinstance(f, dict)}
    return out


def paper_figure(task: str, model: str | None, path: Path = PAPER_FILE) -> PaperFigure | None:
    match = paper_match(task, model, path)
    return match[1] if match else None


def paper_match(task: str, model: str | None,
                path: Path = PAPER_FILE) -> tuple[str, PaperFigure] | None:
    """The paper's model name and figure that a run's model id stands for, if any."""
    if not model:
        return None
    m = _norm(model)
    for name, fig in paper_figures(path).get(task, {}).items():
        key = _norm(name)
        if m.startswith(key) and _MODEL_SUFFIX.match(m[len(key):]):
            return name, fig
    return None


def _method(row: dict[str, Any]) -> dict[str, Any] | None:
    raw = row.get("score_method")
    if not isinstance(raw, str):
        return None
    try:
        m = json.loads(raw)
    except ValueError:
        return None
    return m if isinstance(m, dict) else None


def method_text(m: dict[str, Any]) -> str:
    """A method in one line: evaluator and version, tasks, aggregate, dtype, batch size."""
    head = str(m.get("evaluator") or "?")
    if m.get("lm_eval_version"):
        head = f"{head} {m['lm_eval_version']}"
    parts = [head]
    if m.get("tasks"):
        parts.append("tasks " + ",".join(str(t) for t in m["tasks"]))
    for key in ("aggregate",):
        if m.get(key):
            parts.append(str(m[key]))
    left_out = m.get("left_out")
    if isinstance(left_out, dict):
        named = [f"{k} ({'/'.join(v)})" if v else k for k, v in left_out.items()
                 if isinstance(v, list) and v]
        if named:
            parts.append("left out: " + ", ".join(named))
    parts.append(f"dtype {m.get('dtype', '?')}")
    parts.append(f"batch size {m.get('batch_size', '?')}")
    if m.get("num_fewshot") is not None:
        parts.append(f"few-shot {m['num_fewshot']}")
    if m.get("device"):
        parts.append(f"on {m['device']}")
    return "; ".join(parts)


@cache
def _direction(task: str) -> tuple[str | None, bool]:
    """The task's metric and whether higher is better (a task no longer installed: higher)."""
    try:
        spec = load_task(task)
    except TaskSpecError:
        return None, True
    return spec.metric, spec.higher_is_better


def results(rows: Iterable[dict[str, Any]], *, campaign: str | None = None,
            task: str | None = None) -> list[ResultRow]:
    """The results table of these runs rows (ended runs only), filtered by campaign and task."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") not in ("succeeded", "failed", "killed", "limit"):
            continue
        if campaign is not None and r.get("campaign") != campaign:
            continue
        if task is not None and r.get("task") != task:
            continue
        key = (str(r.get("task") or "?"), str(r.get("agent") or "?"), str(r.get("model") or ""),
               str(r.get("scaffold") or ""))
        groups.setdefault(key, []).append(r)
    out: list[ResultRow] = []
    for (t, agent, model, scaffold), group in sorted(groups.items()):
        metric, higher = _direction(t)
        ok = [r for r in group if r.get("status") == "succeeded"]
        scores = [float(r["score"]) for r in ok if isinstance(r.get("score"), (int, float))]
        n = len(group)
        fig = paper_figure(t, model or None)
        out.append(ResultRow(
            task=t, agent=agent, model=model or None, scaffold=scaffold or None,
            metric=metric or next((r.get("score_metric") for r in group if r.get("score_metric")), None),
            runs=n, succeeded=len(ok),
            mean=statistics.fmean(scores) if scores else None,
            std=statistics.stdev(scores) if len(scores) >= 2 else None,
            best=(max(scores) if higher else min(scores)) if scores else None,
            cost_usd=sum(float(r.get("cost_usd") or 0) for r in group) / n,
            tokens=sum(int(r.get("input_tokens") or 0) + int(r.get("output_tokens") or 0)
                       for r in group) / n,
            time_s=sum(float(r.get("active_s") or 0) for r in group) / n,
            flags=sum(int(r.get("flags") or 0) for r in group),
            paper=fig.value if fig else None, paper_stat=fig.stat if fig else None,
            run_ids=tuple(str(r["run"]) for r in group),
            run_scores=tuple(float(r["score"]) if isinstance(r.get("score"), (int, float)) else None
                             for r in group),
            run_statuses=tuple(str(r.get("status")) for r in group),
            methods=_distinct(m for r in group if (m := _method(r)) is not None)))
    return out


def _distinct(methods: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = []
    for m in methods:
        if m not in out:
            out.append(m)
    return tuple(out)


# -- formats -------------------------------------------------------------------------------------
CSV_FIELDS = ("task", "agent", "model", "scaffold", "metric", "runs", "succeeded", "mean", "std",
              "best", "cost_usd", "tokens", "time_s", "flags", "paper", "paper_stat", "method")


def to_json(rows: Sequence[ResultRow]) -> str:
    return json.dumps([r.to_json() for r in rows], indent=2)


def to_csv(rows: Sequence[ResultRow]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = {k: ("" if v is None else v) for k, v in r.to_json().items()}
        d["method"] = " | ".join(method_text(m) for m in r.methods)
        w.writerow(d)
    return buf.getvalue()


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _agent_label(r: ResultRow) -> str:
    return f"{r.agent}:{r.model}" if r.model else r.agent


def _paper_label(r: ResultRow) -> str:
    if r.paper is None:
        return "—"
    return f"{r.paper:.3f}" + (" (best)" if r.paper_stat == "best" else "")


def _time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cells(r: ResultRow) -> list[str]:
    mean = _num(r.mean) + (f" ± {r.std:.3f}" if r.std is not None else "")
    return [r.task, _agent_label(r), r.scaffold or "—", r.metric or "—", str(r.runs), str(r.succeeded),
            mean, _num(r.best), _paper_label(r), f"${r.cost_usd:.2f}", f"{r.tokens:,.0f}",
            _time(r.time_s), str(r.flags)]


HEADERS = ("Task", "Agent", "Scaffold", "Metric", "Runs", "Succeeded", "Mean ± std", "Best", "Paper",
           "Cost/run", "Tokens/run", "Time/run", "Flags")


def to_markdown(rows: Sequence[ResultRow]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join("---" if i < 4 else "---:" for i in range(len(HEADERS))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_text(rows: Sequence[ResultRow]) -> str:
    table = [list(HEADERS), *(cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    text = "\n".join("  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in table) + "\n"
    stated = [(r, m) for r in rows for m in r.methods]
    if stated:  # how each score was computed, below the table it explains
        text += "\nscored by:\n" + "".join(f"  {r.task} {_agent_label(r)}: {method_text(m)}\n"
                                           for r, m in stated)
    return text
