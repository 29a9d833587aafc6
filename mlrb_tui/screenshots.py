"""Regenerates screenshots/*.svg, one per screen, from the demo journal, deterministically.

Run from the repository root: `python -m mlrb_tui.screenshots [OUT_DIR]`. The scenes here
are also what the SVG snapshot tests compare, so the screenshots and the tests agree.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from mlrb_tui.app import MLRBApp

SIZE = (150, 40)
Steps = Callable[[Pilot[None]], Awaitable[None]]


async def _until(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise TimeoutError("the console did not reach the scene in time")
        await pilot.pause(0.02)


async def _dashboard(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, MLRBApp)
    await _until(pilot, lambda: app.source.started.is_set() and app.dashboard is not None
                 and app.dashboard.table.row_count == 3)
    await _settle(pilot)


async def _settle(pilot: Pilot[None]) -> None:
    """Let pending repaints land, then redraw the table from scratch, so that the SVG does not
    depend on which cells happened to be updated in place before the shot."""
    app = pilot.app
    assert isinstance(app, MLRBApp)
    await pilot.pause()
    if app.dashboard is not None:
        app.dashboard.table.clear_caches()
    await pilot.pause()


async def _run_view(pilot: Pilot[None]) -> None:
    await _dashboard(pilot)
    await pilot.press("enter")
    app = pilot.app
    await _until(pilot, lambda: getattr(app.screen, "state", None) is not None
                 and len(app.screen.query(".chart")) == 2)
    await pilot.pause(0.2)  # charts draw after the layout refresh
    await pilot.pause()


def _keys(setup: Steps, *keys: str) -> Steps:
    """A scene: `setup`, then these keys."""
    async def steps(pilot: Pilot[None]) -> None:
        await setup(pilot)
        await pilot.press(*keys)
        for widget in pilot.app.screen.query("Input, TextArea"):
            widget.cursor_blink = False  # type: ignore[attr-defined]  # a blink is not a change
        await pilot.pause()

    return steps


async def _pending_call(pilot: Pilot[None]) -> None:
    """The running run's view with a tool call waiting for approval (written to the journal,
    which the console follows when there is no bus)."""
    from runner.events import EventFactory
    from runner.journal import Journal
    from tests.fixtures.demo_journal import NOW, RUNNING

    app = pilot.app
    assert isinstance(app, MLRBApp)
    await _run_view(pilot)
    f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
    journal = Journal(app.journal_path)
    try:
        journal.write_sync([
            f.make("tool.call", {"id": "c-rm", "name": "bash",
                                 "args": {"command": "rm -rf /workspace/checkpoints/old"}},
                   ts=NOW),
            f.make("tool.approval", {"id": "c-rm", "state": "pending", "name": "bash"}, ts=NOW)])
    finally:
        journal.close()
    await _until(pilot, lambda: "waiting for approval" in str(
        app.screen.query_one("#run-header").render()))
    await pilot.pause()


async def _replay(pilot: Pilot[None]) -> None:
    app = pilot.app
    await _until(pilot, lambda: getattr(app.screen, "replay", None) is not None)
    await pilot.press("space", "6")  # pause, then seek to 60%
    await _until(pilot, lambda: len(app.screen.query(".chart")) == 2)
    await pilot.pause(0.2)
    await pilot.press("6")  # seek again so the charts show the same point after mounting
    await pilot.pause()


async def _results_chart(pilot: Pilot[None]) -> None:
    """The results screen over a finished campaign's scored runs (written to the journal the
    console follows), the cursor on mini_pile's Claude row so its task is charted."""
    from mlrb_tui.screens.results import ResultsScreen
    from runner.journal import Journal
    from tests.fixtures.demo_journal import SCORED, scored_events

    app = pilot.app
    assert isinstance(app, MLRBApp)
    await _dashboard(pilot)
    journal = Journal(app.journal_path)
    try:
        journal.write_sync(scored_events())
    finally:
        journal.close()
    await _until(pilot, lambda: all(app.fleet.rows.get(r[0], {}).get("status") == r[4] for r in SCORED))
    await pilot.press("R")
    await _until(pilot, lambda: isinstance(app.screen, ResultsScreen) and len(app.screen.shown) == 5)
    screen = app.screen
    assert isinstance(screen, ResultsScreen)
    at = [(r.task, r.agent) for r in screen.shown].index(("mini_pile", "anthropic"))
    screen.table.move_cursor(row=at)
    await _until(pilot, lambda: screen.chart.shown_task == "mini_pile")
    await pilot.pause()


async def _compare(pilot: Pilot[None]) -> None:
    """Two repeats of one agent and a third run, ended (written to the journal the console
    follows), marked on the dashboard and compared: the repeats' tools part at step 4."""
    from mlrb_tui.screens.compare import CompareScreen
    from runner.journal import Journal
    from tests.fixtures.compare_journal import CLAUDE_1, CLAUDE_2, GPT_1, compare_events

    app = pilot.app
    assert isinstance(app, MLRBApp)
    await _dashboard(pilot)
    journal = Journal(app.journal_path)
    try:
        journal.write_sync(compare_events())
    finally:
        journal.close()
    table = app.dashboard.table  # type: ignore[union-attr]
    await _until(pilot, lambda: all(r in table.shown for r in (CLAUDE_1, CLAUDE_2, GPT_1)))
    table.move_cursor(table.row_index(CLAUDE_1))
    await pilot.press("space", "space", "c")
    await _until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded
                 and len(app.screen.query(".compare-chart")) == 3)
    await pilot.pause(0.2)  # charts draw after the layout refresh
    await pilot.pause()


@dataclass(frozen=True)
class Scene:
    name: str
    steps: Steps
    app_kwargs: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] = SIZE


SCENES: tuple[Scene, ...] = (
    Scene("dashboard", _dashboard),
    Scene("run_view", _run_view),
    Scene("kill_confirm", _keys(_dashboard, "down", "ctrl+k")),
    Scene("help", _keys(_dashboard, "question_mark")),
    Scene("message", _keys(_dashboard, "m", *"look at the eval loss first")),
    Scene("limit", _keys(_dashboard, "L")),
    # marks the running and the held run, then holds both
    Scene("bulk_hold", _keys(_dashboard, "space", "space", "p")),
    Scene("approve_edit", _keys(_pending_call, "e")),
    Scene("reject", _keys(_pending_call, "n", *"not the checkpoints: they are the baseline")),
    Scene("replay", _replay, {"replay_run": "r-mini-pile-01", "replay_speed": 1.0}),
    Scene("results", _keys(_dashboard, "R")),
    Scene("results_chart", _results_chart),
    Scene("results_chart_80x24", _results_chart, size=(80, 24)),
    Scene("results_chart_200", _results_chart, size=(200, 50)),
    Scene("compare", _compare, size=(120, 40)),
    # 80x24, a common SSH terminal: the run view's panes as tabs, each the whole width
    Scene("dashboard_80x24", _dashboard, size=(80, 24)),
    Scene("run_view_80x24", _run_view, size=(80, 24)),
    Scene("run_view_80x24_metrics", _keys(_run_view, "greater_than_sign"), size=(80, 24)),
)


def scene_app(journal: Path, scene: Scene) -> MLRBApp:
    """The app for a scene: the demo journal, a pinned clock, a fixed operator."""
    from tests.fixtures.demo_journal import NOW, OPERATOR

    return MLRBApp(journal, None, operator=OPERATOR, clock=lambda: NOW, **scene.app_kwargs)


async def _shoot(journal: Path, scene: Scene, out: Path) -> Path:
    app = scene_app(journal, scene)
    async with app.run_test(size=scene.size) as pilot:
        await scene.steps(pilot)
        name = app.save_screenshot(f"{scene.name}.svg", str(out))
    return Path(name)


async def generate(out: Path) -> list[Path]:
    from tests.fixtures.demo_journal import write_demo_journal

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # a fresh journal per scene, as each test has
        return [await _shoot(write_demo_journal(Path(tmp) / scene.name / "demo-journal.db"), scene, out)
                for scene in SCENES]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("screenshots")
    try:
        import tests.fixtures.demo_journal  # noqa: F401 - the demo journal lives with the tests
    except ImportError:
        sys.exit("run this from the repository root (it needs tests/fixtures/demo_journal.py)")
    for path in asyncio.run(generate(out)):
        print(path)


if __name__ == "__main__":
    main()
