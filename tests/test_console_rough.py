"""What a new user meets first: a command's output shown once, progress bars that redraw in
place, run ids never cut, the demo's daemon not left behind, a browser console that needs no
internet, and a run view that fits 80x24."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

import pytest
from textual.containers import Horizontal
from textual.widgets import TabbedContent

from mlrb_tui.cells import COLUMNS
from mlrb_tui.state import RunState
from mlrb_tui.widgets.output_log import OutputLog
from mlrb_tui.widgets.runs_table import HEADER, arrange
from mlrb_tui.widgets.timeline import ActionLog
from runner.agents.base import ScriptedAgent
from runner.escapes import overwrite_line, strip_escapes
from runner.events import EventFactory
from tasks.api import task_names
from tests.conftest import alive, free_port, require, until_blocking
from tests.fixtures.console_app import Catcher, Feed, make_app, started, until
from tests.fixtures.demo_journal import NOW, RUNNING
from tests.test_console_run_view import open_run
from tests.test_supervisor import IMAGE, Harness

BAR = ("import sys, time\n"
       "for i in range(0, 101, 20):\n"
       "    sys.stderr.write(f'\\rtrain {i:3d}%|' + '#' * (i // 10)); sys.stderr.flush(); time.sleep(0.15)\n"
       "sys.stderr.write('\\n'); print('after the bar')\n")


def outputs(rs: RunState) -> list[tuple[str, str]]:
    return list(rs.output)


# -- output shown once -----------------------------------------------------------------
def test_streamed_output_is_not_repeated_by_its_result() -> None:
    rs = RunState("r1")
    f = EventFactory("r1")
    rs.apply(f.make("tool.call", {"id": "c1", "name": "bash", "args": {"command": "echo hi"}}))
    rs.apply(f.make("sandbox.output", {"stream": "stdout", "text": "hi\nthere\n"}))
    rs.apply(f.make("tool.result", {"id": "c1", "name": "bash", "ok": True, "exit_code": 0,
                                    "output": "hi\nthere\n"}))
    assert outputs(rs) == [("stdout", "hi"), ("stdout", "there")]
    # a command that streamed nothing (the local backend's write_file, an old record): the
    # result is its only copy, so it shows
    rs.apply(f.make("tool.call", {"id": "c2", "name": "bash", "args": {"command": "ls"}}))
    rs.apply(f.make("tool.result", {"id": "c2", "name": "bash", "ok": True, "output": "a.py\n"}))
    assert outputs(rs)[-1] == ("result", "a.py")
    # a result that says it streamed is not repeated even when its chunks were never seen
    rs.apply(f.make("tool.call", {"id": "c3", "name": "bash", "args": {"command": "ls"}}))
    rs.apply(f.make("tool.result", {"id": "c3", "name": "bash", "ok": True, "output": "b.py\n",
                                    "streamed": True}))
    assert ("result", "b.py") not in outputs(rs)
    assert rs.output_total == 3


def test_a_replayed_run_without_streamed_output_shows_its_results() -> None:
    rs = RunState("r1")
    f = EventFactory("r1")
    for i in range(3):
        rs.apply(f.make("tool.call", {"id": f"c{i}", "name": "bash", "args": {"command": "x"}}))
        rs.apply(f.make("tool.result", {"id": f"c{i}", "name": "bash", "ok": True,
                                        "output": f"line {i}\n"}))
    assert outputs(rs) == [("result", f"line {i}") for i in range(3)]


# -- carriage returns --------------------------------------------------------------------
def test_carriage_returns_fold_to_the_last_redraw() -> None:
    assert overwrite_line("10%\r50%\rdone") == "done"
    assert overwrite_line("done\r") == "done"  # "\r\n": the line ends as it was
    assert overwrite_line("a\r\r") == "a"
    assert strip_escapes("a\x1b[K\r\x1b[32mb\r\n", keep_cr=True) == "a\rb\r\n"
    assert strip_escapes("a\r\nb") == "a\nb"


def test_a_progress_bar_split_across_chunks_updates_in_place() -> None:
    rs = RunState("r1")
    f = EventFactory("r1")

    def out(text: str, stream: str = "stderr") -> None:
        rs.apply(f.make("sandbox.output", {"stream": stream, "text": text}))

    out("start\n", "stdout")
    out("\r 10%|#")
    assert rs.partial_lines() == [("stderr", " 10%|#")]
    out("     |\r 2")  # a redraw split mid-line
    assert rs.partial_lines() == [("stderr", " 2")]
    out("0%|##   |")
    assert rs.partial_lines() == [("stderr", " 20%|##   |")]
    out("\x1b[K\r100%|#####|\r")  # an escape stripped first; a trailing \r waits for the next chunk
    assert rs.partial_lines() == [("stderr", "100%|#####|")]
    out("\n")  # "\r" then "\n" in the next chunk: the line ends as the bar stood
    assert outputs(rs) == [("stdout", "start"), ("stderr", "100%|#####|")]
    assert rs.partial_lines() == []
    out("win\r\nlines\r\n", "stdout")
    assert outputs(rs)[-2:] == [("stdout", "win"), ("stdout", "lines")]
    # ten thousand redraws of one bar keep one line, not ten thousand
    for i in range(10_000):
        out(f"\r{i}")
    assert rs.partial_lines() == [("stderr", "9999")] and rs.output_total == 4


@pytest.mark.parametrize("backend", ["local", pytest.param("docker", marks=pytest.mark.docker)])
async def test_a_real_command_streams_once_and_its_bar_redraws(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "docker":
        from runner.image import build_image

        request.getfixturevalue("docker_client")
        build_image(tag=IMAGE, log=lambda s: None)  # reused while it is up to date
    h = Harness(tmp_path, backend)
    try:
        agent = ScriptedAgent([
            {"name": "write_file", "args": {"path": "bar.py", "content": BAR}},
            {"name": "bash", "args": {"command": "echo hello from the sandbox; python3 bar.py",
                                      "timeout_s": 60}},
            {"name": "submit", "args": {"path": "model", "summary": "nothing"}},
        ])
        await h.supervisor(agent).run()
        evs = h.events()
    finally:
        h.close()
    streamed = "".join(e.data["text"] for e in evs if e.kind == "sandbox.output")
    assert "\r" in streamed  # the redraws reach the record as they were written
    result = next(e for e in evs if e.kind == "tool.result" and e.data["name"] == "bash")
    assert "hello from the sandbox" in result.data["output"]
    rs = RunState("tiny-1")
    for ev in evs:
        rs.apply(ev)
    lines = [line for _, line in rs.output]
    assert lines.count("hello from the sandbox") == 1, lines
    assert lines.count("after the bar") == 1, lines
    bars = [line for line in lines if "train" in line and "%|" in line]
    assert bars == ["train 100%|##########"], lines


# -- run ids never cut -----------------------------------------------------------------
def longest_run_ids() -> list[str]:
    """Run ids as the engine makes them (task name, a dash, six hex digits), longest first."""
    names = sorted(task_names(), key=len, reverse=True)
    return [f"{name}-{i:06x}" for i, name in enumerate(names[:3])]


def test_the_run_column_keeps_its_width_and_the_rest_give_way() -> None:
    width = len(longest_run_ids()[0]) + 2
    for room in (80, 120, 180, 250, 10):
        cols = arrange(COLUMNS, width, room)
        assert sorted(c.key for c in cols) == sorted(c.key for c in COLUMNS)  # none lost
        assert cols[0].key == "run" and cols[0].width == width
        edges = list(accumulate(c.width + 1 for c in cols))
        in_view = [c.key for c, right in zip(cols, edges, strict=True) if right <= room]
        if room >= 80:  # what matters most is in view; what gives way is only off to the right
            assert {"run", "status", "time", "metric"} <= set(in_view)
            assert in_view == [c.key for c in cols[:len(in_view)]]
    assert [c.key for c in arrange(COLUMNS, width, 250)] == [c.key for c in COLUMNS]
    assert [c.key for c in arrange(COLUMNS, width, 80)][:5] == ["run", "status", "time", "metric",
                                                                 "score"]


@pytest.mark.parametrize("cols", [80, 120, 180, 250])
async def test_run_ids_are_whole_at_any_width(tmp_path: Path, cols: int) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    runs = longest_run_ids()
    async with app.run_test(size=(cols, 30)) as pilot:
        await started(pilot)
        assert app.dashboard is not None
        table = app.dashboard.table
        for run in runs:
            f = EventFactory(run)
            feed.push(f.make("run.created", {"task": run.rsplit("-", 1)[0], "agent": "scripted",
                                             "limits": {"time_s": 3600}}, ts=NOW - 60),
                      f.make("run.started", {"elapsed_s": 0.0}, ts=NOW - 60))
        await until(pilot, lambda: all(r in table.shown for r in runs))
        await pilot.press("home", "space")  # a marked run keeps its whole id too
        await pilot.pause()
        lines = [table.render_line(y).text for y in range(HEADER, HEADER + table.row_count)]
        header = table.render_line(0).text
        for run in runs:  # whole, with a space after it, marked or not
            assert any(x.startswith(f"{run} ") or x.startswith(f"● {run} ") for x in lines), lines
        assert "● " in "".join(lines)
        assert header.startswith("run ") and "status" in header
        assert len(header.rstrip()) <= cols
        if cols >= 180:  # room for every column: none gives way
            assert header.rstrip().endswith("flags") and "task" in header


# -- the demo's daemon -------------------------------------------------------------------
FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "MLRB_HOME": str(tmp_path / "home"), "MLRB_TASKS_PATH": str(FIXTURE_TASKS),
           "MLRB_OPERATOR": "ana@ops", "MLRB_SANDBOX": "local", "PYTHONUNBUFFERED": "1",
           "TERM": "xterm-256color", "TINY_STEPS": "2000", "TINY_DELAY": "0.05"}
    env.pop("MLRB_BUS_URL", None)
    return env


def mlrb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlrb_tui.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def demo_in_a_terminal(env: dict[str, str]) -> str:
    """`mlrb demo` in a real pseudo-terminal: wait for its console, quit it with `q`, and
    return what the terminal showed after the console was gone."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mlrb_tui.cli", "demo", "--runs", "1",
                             "--task", "tiny_train"], env=env, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    seen = bytearray()

    def read(until: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen.extend(os.read(master, 65536))
                except OSError:  # the terminal's other side closed: the demo exited
                    return

    try:
        read(lambda: "Quit" in strip_escapes(seen.decode(errors="replace")), 120)
        assert "Quit" in strip_escapes(seen.decode(errors="replace")), seen[-2000:]
        mark = len(seen)
        os.write(master, b"q")
        read(lambda: proc.poll() is not None, 120)
        assert proc.wait(timeout=30) == 0
        read(lambda: False, 10)  # to the end of what it wrote: the read fails once all is read
        return strip_escapes(seen[mark:].decode(errors="replace"))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_quitting_the_demo_stops_the_daemon_it_started(tmp_path: Path) -> None:
    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    env = demo_env(tmp_path)
    home = tmp_path / "home"
    try:
        after = demo_in_a_terminal(env)
        assert "Stopping the runner daemon the demo started" in after, after
        assert "runner daemon stopped" in after, after
        assert not (home / "daemon.json").exists()
        assert "no runner daemon" in mlrb(env, "pause", "x").stderr
    finally:
        mlrb(env, "down")


def test_quitting_the_demo_leaves_a_daemon_that_ran_before(tmp_path: Path) -> None:
    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    env = demo_env(tmp_path)
    home = tmp_path / "home"
    try:
        assert "up (pid" in mlrb(env, "up").stdout
        pid = json.loads((home / "daemon.json").read_text())["pid"]
        after = demo_in_a_terminal(env)
        assert f"The runner daemon (pid {pid}) was running before the demo and still runs" in after
        assert "`mlrb down` stops it" in after
        assert alive(pid)
    finally:
        assert "stopped" in mlrb(env, "down").stdout


# -- the browser console offline -----------------------------------------------------------
URL = re.compile(r"""(?:https?:)?//[^\s"'()<>]+""")


def test_the_served_page_fetches_nothing_from_outside(tmp_path: Path) -> None:
    pytest.importorskip("textual_serve")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlrb_tui.cli", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "MLRB_HOME": str(tmp_path), "HOME": str(tmp_path)})

    def get(path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return bytes(resp.read())
        except OSError:
            assert proc.poll() is None, f"mlrb serve exited with {proc.returncode}"
            return None

    try:
        body = until_blocking(lambda: get("/"), f"mlrb serve on port {port}", timeout=30,
                              interval=0.2)
        assert body is not None
        page = body.decode()
        assert "MLRB Console" in page
        assert "googleapis" not in page and "gstatic" not in page
        urls = URL.findall(page)
        outside = [u for u in urls if urllib.parse.urlsplit(u if ":" in u.split("//")[0] else
                                                           "http:" + u).hostname
                   not in ("127.0.0.1", "localhost")]
        assert outside == [], outside
        # the font comes from this server, and so does every stylesheet the page links
        fonts = [u for u in urls if u.endswith(".ttf")]
        import textual_serve

        shipped = sorted((Path(textual_serve.__file__).parent / "static" / "fonts").glob("*.ttf"))
        assert len(fonts) == len(shipped)  # the files it ships, if any; else the system's fonts
        assert all(u.startswith(f"http://127.0.0.1:{port}/static/fonts/") for u in fonts)
        for url in fonts + [u for u in urls if u.endswith(".css")]:
            body = get(urllib.parse.urlsplit(url).path)
            assert body, url
            if url.endswith(".css"):  # comments may name sites; no rule may load from one
                assert not re.search(rb"url\(\s*['\"]?(https?:)?//|@import", body), url
        assert "font-family" in page and "monospace" in page
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the run view on a narrow terminal and the output pane ------------------------------
async def test_the_run_view_turns_to_tabs_when_narrow_and_back_when_wide(tmp_path: Path) -> None:
    app = make_app(tmp_path, send=Catcher())
    async with app.run_test(size=(150, 40), notifications=True) as pilot:
        screen = await open_run(pilot, app)
        assert not screen.query(TabbedContent) and screen.query_one("#panes", Horizontal)
        assert not screen.check_action("next_tab", (1,))
        await pilot.press("t")  # stop following the output: kept across the switch
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: bool(screen.query(TabbedContent)) and screen._ready)
        tabs = screen.query_one(TabbedContent)
        assert tabs.active == "tab-actions" and screen.query_one(ActionLog).has_focus
        assert screen.query_one(OutputLog).auto_scroll is False
        # each pane the whole width
        assert screen.query_one(ActionLog).outer_size.width == 80
        await pilot.press("greater_than_sign")
        assert tabs.active == "tab-metrics"
        await until(pilot, lambda: len(screen.query(".chart")) == 2)
        assert all(c.outer_size.width >= 78 for c in screen.query(".chart"))
        await pilot.press("less_than_sign", "less_than_sign")
        assert tabs.active == "tab-interventions"
        await pilot.press("l")  # the logs: the output tab, full screen
        assert tabs.active == "tab-output" and screen.maximized is screen.query_one(OutputLog)
        await pilot.press("escape")
        assert screen.maximized is None
        await pilot.press("E")  # a jump to the next error shows the actions
        assert tabs.active == "tab-actions"
        await pilot.resize_terminal(150, 40)
        await until(pilot, lambda: not screen.query(TabbedContent) and screen._ready)
        assert screen.query_one("#panes", Horizontal) and screen.query_one(OutputLog).auto_scroll is False
        assert "train.py" in "\n".join(screen.query_one(ActionLog).plain_lines())


async def test_the_run_view_opens_as_tabs_on_80x24(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_run(pilot, app)
        assert screen.query_one(TabbedContent).active == "tab-actions"
        assert screen.check_action("next_tab", (1,))
        # output that came while its tab was hidden shows at its tail once the tab is up
        out = screen.query_one(OutputLog)
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        feed.push(*[f.make("sandbox.output", {"stream": "stdout", "text": f"line {i}\n"}, ts=NOW)
                    for i in range(60)])
        await until(pilot, lambda: out.lines[-1].text.startswith("line 59"))
        await pilot.press("greater_than_sign", "greater_than_sign")
        await pilot.pause()
        assert screen.query_one(TabbedContent).active == "tab-output"
        assert out.max_scroll_y > 0 and out.scroll_y == out.max_scroll_y


async def test_a_progress_bar_redraws_on_one_row_of_the_output_pane(tmp_path: Path) -> None:
    feed = Feed()
    app = make_app(tmp_path, feed=feed, send=Catcher())
    async with app.run_test(size=(150, 40)) as pilot:
        screen = await open_run(pilot, app)
        out = screen.query_one(OutputLog)
        await until(pilot, lambda: len(out.lines) > 0)
        rows = len(out.lines)
        f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
        for i in range(0, 101, 10):
            feed.push(f.make("sandbox.output", {"stream": "stderr", "text": f"\r{i:3d}%|{'#' * (i // 10)}"},
                             ts=NOW))
            def shows(bar: str = f"{i:3d}%|") -> bool:
                return out.lines[-1].text.startswith(bar)

            await until(pilot, shows)
            assert len(out.lines) == rows + 1  # the bar's row, redrawn in place
        feed.push(f.make("sandbox.output", {"stream": "stderr", "text": "\ndone\n"}, ts=NOW))
        await until(pilot, lambda: out.lines[-1].text.startswith("done"))
        assert [s.text.rstrip() for s in out.lines[-2:]] == ["100%|##########", "done"]
        assert len(out.lines) == rows + 2
