"""Live charts of a run's metrics, one small plot per quantity with every series of it
(train/loss and eval/loss share a chart), against step or against time."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from mlrb_tui.state import RunState

MAX_CHARTS = 3
MAX_PLOTTED = 400  # points drawn per series; longer series are thinned evenly


def thin(points: list[tuple[float, float]], n: int = MAX_PLOTTED) -> list[tuple[float, float]]:
    if len(points) <= n:
        return points
    stride = len(points) / n
    out = [points[int(i * stride)] for i in range(n)]
    out[-1] = points[-1]
    return out


SPLIT_PREFIXES = ("train_", "training_", "val_", "valid_", "validation_", "eval_", "test_")


def quantity(name: str) -> str:
    """What a series measures: 'eval/loss', 'val_loss' and 'loss' all chart as 'loss'."""
    base = name.rsplit("/", 1)[-1]
    for p in SPLIT_PREFIXES:
        if base.startswith(p) and len(base) > len(p):
            return base[len(p):]
    return base


def chart_groups(names: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(quantity(name), []).append(name)
    return groups


class MetricCharts(Vertical):
    """Redraws only when the state's metrics changed since the last sync."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._version = -1
        self._names: list[str] = []
        self._groups: dict[str, list[str]] = {}
        self.x_axis = "step"  # or "time": minutes since the run's first point

    def toggle_x(self, state: RunState) -> str:
        self.x_axis = "time" if self.x_axis == "step" else "step"
        self._draw(state)
        return self.x_axis

    def compose(self) -> ComposeResult:
        yield Static("no metrics logged yet", classes="empty")

    def sync(self, state: RunState) -> None:
        if state.metrics_version == self._version:
            return
        self._version = state.metrics_version
        self._groups = dict(list(chart_groups(list(state.metrics)).items())[:MAX_CHARTS])
        names = list(self._groups)
        if names != self._names:
            self._names = names
            self.remove_children()
            if not names:
                self.mount(Static("no metrics logged yet", classes="empty"))
            else:
                self.mount_all(PlotextPlot(id=f"chart-{i}", classes="chart")
                               for i in range(len(names)))
            self.call_after_refresh(self._draw, state)
            return
        self._draw(state)

    def _draw(self, state: RunState) -> None:
        origin = min((t[0] for t in state.metric_times.values() if t), default=0.0)
        for i, group in enumerate(self._names):
            try:
                plot = self.query_one(f"#chart-{i}", PlotextPlot)
            except Exception:  # not mounted yet: the next sync draws it
                continue
            plt = plot.plt
            plt.clear_data()
            plt.clear_figure()
            titles = []
            series = self._groups.get(group, [])
            for name in series:
                raw = list(state.metrics.get(name, ()))
                if self.x_axis == "time":
                    times = list(state.metric_times.get(name, ()))
                    raw = [((t - origin) / 60.0, p[1]) for t, p in zip(times, raw, strict=False)]
                points = thin(raw)
                if not points:
                    continue
                xs = [p[0] for p in points]
                ys = [p[1] for p in points]
                plt.plot(xs, ys, marker="braille", label=name if len(series) > 1 else None)
                titles.append(f"{name} = {ys[-1]:.4g}")
            if titles:
                plt.title("  ".join(titles))
            plt.xlabel("step" if self.x_axis == "step" else "minutes")
            plot.refresh()
