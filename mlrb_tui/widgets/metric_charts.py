"""Live charts of a run's metrics against step, one small plot per metric name."""

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


class MetricCharts(Vertical):
    """Redraws only when the state's metrics changed since the last sync."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._version = -1
        self._names: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("no metrics logged yet", classes="empty")

    def sync(self, state: RunState) -> None:
        if state.metrics_version == self._version:
            return
        self._version = state.metrics_version
        names = list(state.metrics)[:MAX_CHARTS]
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
        for i, name in enumerate(self._names):
            try:
                plot = self.query_one(f"#chart-{i}", PlotextPlot)
            except Exception:  # not mounted yet: the next sync draws it
                continue
            points = thin(list(state.metrics.get(name, ())))
            plt = plot.plt
            plt.clear_data()
            plt.clear_figure()
            if points:
                xs = [p[0] for p in points]
                ys = [p[1] for p in points]
                plt.plot(xs, ys, marker="braille")
                plt.title(f"{name} = {ys[-1]:.4g} @ {xs[-1]:g}")
            plt.xlabel("step")
            plot.refresh()
