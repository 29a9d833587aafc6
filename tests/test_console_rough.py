"""What a new user meets first: a command's output shown once, progress bars that redraw in
place, run ids never cut, the demo's daemon not left behind, a browser console that needs no
internet, and a run view that fits 80x24."""

from __future__ import annotations

from pathlib import Path

from mlrb_tui.state import RunState
from runner.agents.base import ScriptedAgent
from runner.escapes import overwrite_line, strip_escapes
from runner.events import EventFactory
from tests.test_supervisor import Harness

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


async def test_a_real_command_streams_once_and_its_bar_redraws(tmp_path: Path) -> None:
    h = Harness(tmp_path, "local")
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
