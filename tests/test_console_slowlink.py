"""The console over a slow link: it repaints less when its terminal backs up, sends only the
cells that changed, keeps flickering values to the step it shows, and sends nothing while
nothing on screen changes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.segment import Segment
from rich.style import Style
from textual._compositor import ChopsUpdate, CompositorUpdate
from textual.drivers._writer_thread import WriterThread
from textual.geometry import Region
from textual.screen import Screen
from textual.strip import Strip

from mlrb_tui.app import MLRBApp
from mlrb_tui.cells import (
    COLUMNS,
    quantise_bytes,
    quantise_elapsed,
    quantise_pct,
    row_values,
)
from mlrb_tui.output import CroppedUpdate, WriteWatch, render_strip
from mlrb_tui.pacing import RepaintPacer
from runner.events import EventFactory
from tests.fixtures.console_app import NOW, Feed, make_app, started, until

GIB = 1 << 30


# -- the pacer ---------------------------------------------------------------------------
def test_slow_writes_halve_the_rate_down_to_a_floor() -> None:
    seen: list[float] = []
    pacer = RepaintPacer(8.0, floor_hz=1.0, on_change=seen.append)
    assert pacer.status() == ""
    assert pacer.observe(0.0, 0.2, 0)  # one write blocked for 200 ms
    assert pacer.hz == 4.0
    assert pacer.status() == "slow link: repainting at 4 Hz"
    # one burst halves once: looks within the hold time leave the rate alone
    assert not pacer.observe(0.5, 0.2, 0)
    assert pacer.hz == 4.0
    assert pacer.observe(1.0, 0.2, 0)
    assert pacer.observe(2.0, 0.2, 0)
    assert pacer.hz == 1.0
    assert not pacer.observe(3.0, 0.2, 0)  # the floor
    assert pacer.hz == 1.0
    assert seen == [4.0, 2.0, 1.0]
    assert pacer.status() == "slow link: repainting at 1 Hz"


def test_a_backed_up_queue_lowers_the_rate_too() -> None:
    pacer = RepaintPacer(8.0, backlog=4)
    assert not pacer.observe(0.0, 0.0, 3)
    assert pacer.observe(0.25, 0.0, 4)
    assert pacer.hz == 4.0


def test_recovery_doubles_back_after_a_clear_spell() -> None:
    pacer = RepaintPacer(8.0, recover_s=5.0)
    for t in (0.0, 1.0):
        pacer.observe(t, 0.2, 0)
    assert pacer.hz == 2.0
    t = 1.25
    while t < 6.0:  # clear, but not for long enough yet
        assert not pacer.observe(t, 0.0, 0)
        t += 0.25
    assert pacer.hz == 2.0
    assert pacer.observe(6.25, 0.0, 0)
    assert pacer.hz == 4.0
    assert pacer.status() == "slow link: repainting at 4 Hz"
    # a relapse while recovering halves again and restarts the clear spell
    assert pacer.observe(7.5, 0.2, 0)
    assert pacer.hz == 2.0
    assert not pacer.observe(12.0, 0.0, 0)
    assert pacer.observe(17.0, 0.0, 0)
    assert pacer.observe(22.0, 0.0, 0)
    assert pacer.hz == 8.0
    assert not pacer.slowed and pacer.status() == ""
    assert not pacer.observe(40.0, 0.0, 0)  # never above the chosen rate


# -- the watch on the driver's writes -------------------------------------------------------
class SteppingClock:
    """Each reading is `step` seconds after the one before: every write takes `step`."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class FakeDriver:
    def __init__(self) -> None:
        self.out: list[str] = []
        # Textual's own writer thread, not started: what is put in it stays queued
        self._writer_thread = WriterThread(open("/dev/null", "w"))  # noqa: SIM115

    def write(self, data: str) -> None:
        self.out.append(data)


def test_write_watch_times_writes_and_reads_the_queue() -> None:
    driver = FakeDriver()
    watch = WriteWatch(driver, clock=SteppingClock(0.3))
    driver.write("abc")
    assert driver.out == ["abc"] and watch.written == 3
    for _ in range(5):
        driver._writer_thread.write("x")
    assert watch.take() == (0.3, 5)
    assert watch.take() == (0.0, 5)  # the slowest write is since the last look
    watch.close()
    driver.write("d")
    assert watch.written == 3


async def test_the_console_backs_off_and_says_so(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=(150, 40)) as pilot:
        await started(pilot)
        driver = FakeDriver()
        app.write_watch = WriteWatch(driver, clock=SteppingClock(0.2))
        driver.write("a frame the terminal was slow to take")
        app.look_at_link()
        assert app.pacer.hz == 4.0
        timer = app._repaint_timer
        assert timer is not None and timer._interval == 0.25
        assert "slow link: repainting at 4 Hz" in app.topbar_text().plain
        topbar = app.dashboard.query_one("#topbar")  # type: ignore[union-attr]
        await until(pilot, lambda: "slow link: repainting at 4 Hz" in str(topbar.render()))
        ticks = app.ticks
        await until(pilot, lambda: app.ticks > ticks)  # the retimed timer still repaints


# -- quantised values --------------------------------------------------------------------
def test_flickering_values_are_kept_to_a_step() -> None:
    assert [quantise_elapsed(s) for s in (7.9, 59.9, 60.0, 127.0, 1799.0, 3604.0, 3619.9)] == \
        [7, 59, 60, 125, 1795, 3600, 3610]
    assert [quantise_pct(u) for u in (0.0, 0.9, 1.1, 91.9, 92.4, 100.0)] == [0, 0, 2, 92, 92, 100]
    assert quantise_bytes(5.23 * GIB) == 5.2 * GIB
    assert quantise_bytes(31.6 * GIB) == 32 * GIB
    assert quantise_bytes(700 << 20) == 700 << 20


def row(**kw: Any) -> dict[str, Any]:
    return {"run": "r1", "status": "running", "active_s": 0.0, "active_ts": NOW - 600.0,
            "budget_s": 3600, **kw}


def test_a_flicker_inside_a_step_leaves_the_cells_alone() -> None:
    def values(r: dict[str, Any], now: float = NOW) -> tuple[Any, ...]:
        return row_values(r, now, None, COLUMNS)

    a = row(gpu_util=92.2, gpu_mem_used=30.04 * GIB, gpu_mem_total=80 * GIB, cpu_pct=212.0,
            cpu_limit=4, mem_bytes=int(5.21 * GIB), mem_limit=16 * GIB)
    b = {**a, "gpu_util": 91.6, "gpu_mem_used": 30.3 * GIB, "cpu_pct": 208.0,
         "mem_bytes": int(5.18 * GIB)}
    assert values(a) == values(b)
    # a running run's clock past ten minutes moves in steps of five seconds
    assert values(a, NOW + 1) == values(a, NOW + 2)
    assert values(a, NOW) != values(a, NOW + 5)
    # a held clock does not move: it reads to the second
    held = row(status="held", active_s=601.0, active_ts=None)
    assert values(held)[4][0] == 601


# -- what goes to the terminal -----------------------------------------------------------
def test_a_cropped_update_sends_the_changed_span_alone() -> None:
    # one widget 30 cells wide; the span 12..18 changed, inside its second segment
    line = Strip([Segment("a" * 10), Segment("B" * 10), Segment("c" * 10)])
    update = ChopsUpdate([{0: line}], [(0, 12, 18)], [[30]])
    console = Console(color_system=None, force_terminal=True, width=40)
    assert "aaaa" in update.render_segments(console)  # Textual's starts at the left edge
    cropped = CroppedUpdate.of(update).render_segments(console)
    assert cropped == "\x1b[1;11H" + "B" * 8  # from the segment the span starts in, to its end


def screen_of(sequences: str) -> list[tuple[str, frozenset[str]]]:
    """Each character written, with the SGR state it was written in (a terminal's view)."""
    import re
    cells: list[tuple[str, frozenset[str]]] = []
    state: dict[str, str] = {}
    for sgr, text in re.findall(r"\x1b\[([0-9;]*)m|([^\x1b]+)", sequences):
        if text:
            cells += [(ch, frozenset(f"{k}={v}" for k, v in state.items())) for ch in text]
            continue
        codes = sgr.split(";") if sgr else ["0"]
        while codes:
            code = codes.pop(0)
            if code == "0":
                state.clear()
            elif code in ("38", "48"):
                n = 2 if codes[0] == "5" else 4
                state["fg" if code == "38" else "bg"] = ";".join(codes[:n])
                del codes[:n]
            elif code == "39":
                state.pop("fg", None)
            elif code == "49":
                state.pop("bg", None)
            else:
                state[code] = "on"
    return cells


def a_row_strip(tint: int) -> Strip:
    """A dashboard-like line; each `tint` makes new styles (a style caches its codes)."""
    row = Style.parse(f"#d0d0{tint:02x} on #2020{tint:02x}")
    grey = f"#8080{tint:02x}"
    return Strip([
        Segment("run-1 ", row + Style(bold=True)),
        Segment("mini ", row),
        Segment("loss=", row + Style.parse(grey)),  # a colour change only
        Segment("2.1", row + Style.parse(f"bold {grey}")),  # bold on
        Segment("@5", row + Style.parse(grey)),  # bold off
        Segment("plain", None),
        Segment("dim", Style(dim=True)),
        Segment(" ok", row + Style.parse(f"#00ff{tint:02x}")),
    ])


def test_a_colour_change_alone_is_sent_alone_and_reads_the_same() -> None:
    for tint, system in enumerate(("256", "truecolor")):
        strip = a_row_strip(tint)
        console = Console(color_system=system, force_terminal=True, width=80)  # type: ignore[arg-type]
        ours, textuals = render_strip(strip, console), strip.render(console)
        assert screen_of(ours) == screen_of(textuals)
        assert len(ours) < len(textuals)
        assert ours.endswith("\x1b[0m")  # the terminal is left as Textual leaves it


class Output:
    """What the app would write to a terminal, counted while it runs headless."""

    def __init__(self, app: MLRBApp) -> None:
        self.app = app
        self.texts: list[str] = []
        original: Callable[[Screen[Any], RenderableType | None], None] = app._display

        def counted(screen: Screen[Any], renderable: RenderableType | None) -> None:
            if isinstance(renderable, CompositorUpdate):
                if type(renderable) is ChopsUpdate:
                    renderable = CroppedUpdate.of(renderable)
                self.texts.append(renderable.render_segments(app.console))
            original(screen, renderable)

        app._display = counted  # type: ignore[method-assign]

    @property
    def bytes(self) -> int:
        return sum(len(t.encode()) for t in self.texts)

    def reset(self) -> None:
        self.texts.clear()


async def test_an_idle_dashboard_writes_nothing(tmp_path: Path) -> None:
    app = make_app(tmp_path)  # a fixed clock: no clock on screen moves
    async with app.run_test(size=(150, 40)) as pilot:
        await started(pilot)
        out = Output(app)
        ticks = app.ticks
        await until(pilot, lambda: app.ticks >= ticks + 3)  # what the start drew is out
        out.reset()
        ticks = app.ticks
        await until(pilot, lambda: app.ticks >= ticks + 20)  # a full repaint each second too
        assert out.texts == [] and out.bytes == 0


def many_runs(feed: Feed, n: int) -> list[EventFactory]:
    factories = [EventFactory(f"many-{i:03d}") for i in range(n)]
    feed.push(*(f.make("run.created", {"task": "mini_pile", "agent": "scripted",
                                       "limits": {"time_s": 3600}}, ts=NOW - 60)
                for f in factories))
    feed.push(*(f.make("run.started", {"elapsed_s": 0.0}, ts=NOW - 60) for f in factories))
    return factories


async def test_an_off_screen_change_repaints_nothing(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed)
    async with app.run_test(size=(150, 24)) as pilot:
        await started(pilot)
        factories = many_runs(feed, 60)
        assert app.dashboard is not None
        table = app.dashboard.table
        await until(pilot, lambda: table.row_count >= 63)
        far = factories[-1].run
        assert table.row_index(far) not in table._view()
        ticks = app.ticks
        await until(pilot, lambda: app.ticks >= ticks + 3)  # the new rows and scrollbar are out
        regions: list[Region] = []
        original = table.refresh

        def refresh(*r: Region, **kw: Any) -> Any:
            regions.extend(r)
            return original(*r, **kw)

        table.refresh = refresh  # type: ignore[method-assign]
        out = Output(app)
        feed.push(factories[-1].make("metric", {"step": 5, "values": {"loss": 0.5}}, ts=NOW))
        await until(pilot, lambda: table.rows[far].stale)
        ticks = app.ticks
        await until(pilot, lambda: app.ticks >= ticks + 2)
        assert regions == [] and out.texts == []
        assert table.cell_text(far, "metric") == "loss=0.5@5"  # drawn when it comes into view
        # a change on screen repaints that one cell, not its line
        near = factories[0].run
        feed.push(factories[0].make("metric", {"step": 7, "values": {"loss": 0.25}}, ts=NOW))
        await until(pilot, lambda: table.cell_text(near, "metric") == "loss=0.25@7"
                    and bool(regions))
        metric = [c.key for c in table.columns].index("metric")
        width = table.columns[metric].width + 1
        assert regions == [Region(table._edges[metric] - width,
                                  table.row_index(near) + 1 - round(table.scroll_y), width, 1)]
        await until(pilot, lambda: out.bytes > 0)
        sent = "".join(out.texts)
        assert "loss=" in sent and near not in sent and "mini_pile" not in sent
