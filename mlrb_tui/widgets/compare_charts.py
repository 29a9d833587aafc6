"""The compare screen's charts: one plot per metric name, one line per run, the legend by run
id, against step or against minutes since each run started."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static
from textual_plotext import PlotextPlot

from mlrb_tui.comparison import RunTrack, curves, metric_names
from mlrb_tui.widgets.metric_charts import thin

# a run keeps its colour in every chart, even where a run before it logged nothing
COLOURS = ("blue+", "green+", "red+", "cyan+", "magenta+", "yellow", "gray", "blue", "green", "red")
MAX_CHARTS = 6  # three abreast, in two rows at most


class OverlaidCharts(Grid):
    """Remounts its plots only when the set of metric names changes; redraws on new points."""

    DEFAULT_CSS = """
    OverlaidCharts { grid-size: 3; grid-gutter: 0 1; height: 1fr; min-height: 8; }
    OverlaidCharts .compare-chart { height: 1fr; min-height: 8; }
    OverlaidCharts .empty { color: $text-muted; padding: 1 2; column-span: 3; }
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.x_axis = "step"  # or "time": minutes since each run's start
        self.names: list[str] = []
        self.drawn: dict[str, list[tuple[str, list[float], list[float]]]] = {}
        self._key: tuple[object, ...] = ()
        self.colours: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Static("no metrics logged by these runs yet", classes="empty")

    def toggle_x(self) -> str:
        self.x_axis = "time" if self.x_axis == "step" else "step"
        self._key = ()
        return self.x_axis

    def sync(self, tracks: Sequence[RunTrack], origins: dict[str, float]) -> None:
        """Draw what changed since the last sync (a run's track version, the axis)."""
        key = (self.x_axis, tuple((t.run, t.version) for t in tracks), tuple(sorted(origins.items())))
        if key == self._key:
            return
        self._key = key
        self.colours = {t.run: COLOURS[i % len(COLOURS)] for i, t in enumerate(tracks)}
        names = metric_names(tracks)[:MAX_CHARTS]
        self.drawn = {n: curves(tracks, n, self.x_axis, origins) for n in names}
        if names != self.names:
            self.names = names
            self.styles.grid_size_columns = max(1, min(len(names), 3))
            self.remove_children()
            if not names:
                self.mount(Static("no metrics logged by these runs yet", classes="empty"))
            else:
                self.mount_all(PlotextPlot(id=f"cmp-chart-{i}", classes="compare-chart")
                               for i in range(len(names)))
            self.call_after_refresh(self._draw)
            return
        self._draw()

    def _draw(self) -> None:
        for i, name in enumerate(self.names):
            try:
                plot = self.query_one(f"#cmp-chart-{i}", PlotextPlot)
            except Exception:  # not mounted yet: the next sync draws it
                continue
            plt = plot.plt
            plt.clear_data()
            plt.clear_figure()
            for run, xs, ys in self.drawn.get(name, []):
                points = thin(list(zip(xs, ys, strict=True)))
                plt.plot([p[0] for p in points], [p[1] for p in points], marker="braille",
                         label=run, color=self.colours.get(run, "gray"))
            plt.title(name)
            plt.xlabel("step" if self.x_axis == "step" else "minutes since start")
            plot.refresh()
