"""`mlrb export` end to end: journals of real runs (the scripted baseline through the engine,
and an LLM agent whose real SDK talks to the local wire-protocol server, with an operator
stepping in), exported the three ways by the command line. The JSON Lines are the journal's
events; the Inspect log is read back by `inspect_ai`'s own reader; the HTML page is opened in
a real headless Chromium, which must draw its charts, and what a sandbox printed to inject
markup comes out as text."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.config import Config
from runner.events import Event
from runner.journal import Journal, JournalReader
from tests.conftest import journal_events as _events
from tests.conftest import require, until
from tests.conftest import tiny_train_script as _train_script

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"
FIXTURE = FIXTURE_TASKS / "tiny_train" / "task.toml"
OPERATOR = "ana@ops"
STEER = "Use a learning rate of 0.05 from now on."
# what a hostile program in the sandbox prints: markup that would run, close the page's
# elements, or fetch, and terminal escapes (colour, a window title, a screen clear)
INJECTION = ('</pre></td></tr></table><script>document.title="pwned"</script>'
             '<img src=x onerror="document.title=\'pwned\'"><b>bold</b> '
             '\x1b[31mred\x1b[0m \x1b]0;title\x07\x1b[2J<a href="https://example.invalid/">x</a>')
INJECT_CMD = "printf '%s\\n' " + "'" + INJECTION.replace("'", "'\\''") + "'"


def mlrb(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLRB_HOME": str(home), "MLRB_TASKS_PATH": str(FIXTURE_TASKS)}
    proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", *args], env=env, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlrb {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


async def _scripted_run(home: Path) -> str:
    from runner.engine import Engine, Job

    engine = Engine(Config(home=home, backend="local"), use_bus=False)
    await engine.start()
    try:
        run = await engine.submit(Job(task="tiny_train"))
        await engine.tasks[run]
    finally:
        await engine.stop()
    return run


async def _llm_run(home: Path) -> str:
    """An OpenAI-protocol agent writes and runs a training script, waits at a gate while an
    operator messages it, prints the injection, and submits."""
    from runner.agents import make_agent
    from runner.control import ControlCommand
    from runner.local_sandbox import LocalSandbox
    from runner.supervisor import RunLimits, RunRequest, RunSupervisor
    from tasks.api import load_spec_file
    from tests.llm_server import LLMServer, Reply

    run = "llm-export-1"
    seen: list[Event] = []
    journal = Journal(home / "mlrb.db")
    gate = "while [ ! -e .go ]; do sleep 0.05; done; echo released"
    try:
        with LLMServer() as srv:
            srv.script(
                Reply.call("write_file", {"path": "train.py", "content": _train_script()},
                           text="I will write a small training script."),
                Reply.call("bash", {"command": "python3 train.py 12", "timeout_s": 120}),
                Reply.call("bash", {"command": gate, "timeout_s": 120}),
                Reply.call("bash", {"command": INJECT_CMD}),
                Reply.call("submit", {"path": "model", "summary": "linear fit"},
                           text="Submitting the model."))
            agent = make_agent("openai", "gpt-4o", {"base_url": srv.openai_url, "api_key": "k",
                                                    "backoff_s": 0.01})
            sup = RunSupervisor(
                RunRequest(run=run, task=load_spec_file(FIXTURE), scale="smoke",
                           agent_kind="openai", limits=RunLimits(time_s=300, steps=8)),
                journal=journal, publish=seen.extend, make_sandbox=LocalSandbox, agent=agent,
                workspace=home / "runs" / run / "workspace", runner_id="test")
            task = asyncio.create_task(sup.run())
            await until(lambda: any(e.kind == "tool.call" and "[ ! -e .go ]" in json.dumps(e.data)
                                    for e in seen), "the gated bash call", timeout=120)
            await sup.control(ControlCommand(run=run, action="message", operator=OPERATOR,
                                             reason="steer it", args={"text": STEER}))
            (sup.workspace / ".go").touch()
            status = await asyncio.wait_for(task, 180)
            await agent.close()
    finally:
        journal.close()
    assert status == "succeeded", sup.end_reason
    return run


@pytest.fixture(scope="module")
def journal_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """One journal holding a scripted run and an LLM run: (home, scripted run, LLM run)."""
    home = tmp_path_factory.mktemp("export") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
        mp.setenv("TINY_STEPS", "6")
        for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            mp.delenv(var, raising=False)
        scripted = asyncio.run(_scripted_run(home))
        llm = asyncio.run(_llm_run(home))
    yield home, scripted, llm


def test_jsonl_is_the_journaled_events_one_a_line(journal_home: tuple[Path, str, str]) -> None:
    home, scripted, llm = journal_home
    for run in (scripted, llm):
        journaled = _events(home / "mlrb.db", run)
        out = mlrb(home, "export", run, "--format", "jsonl").stdout
        lines = out.splitlines()
        assert len(lines) == len(journaled) > 10
        assert [json.loads(line) for line in lines] == [e.to_dict() for e in journaled]
    # to a file, by an unambiguous prefix
    target = home.parent / "out" / "events.jsonl"
    done = mlrb(home, "export", llm[:9], "--format", "jsonl", "-o", str(target))
    assert target.read_text().splitlines() == lines
    assert f"{len(lines)} events to {target}" in done.stderr


def test_an_unknown_run_is_a_clear_error(journal_home: tuple[Path, str, str]) -> None:
    home, _, _ = journal_home
    for fmt in ("jsonl", "inspect", "html"):
        proc = mlrb(home, "export", "no-such-run", "--format", fmt, check=False)
        assert proc.returncode == 1
        assert "no run 'no-such-run'" in proc.stderr and "mlrb runs" in proc.stderr
        assert proc.stdout == ""
    # an ambiguous prefix is not a run either ("llm-export-1" and the scripted "tiny_train-…")
    assert mlrb(home, "export", "", "--format", "jsonl", check=False).returncode == 1
    # no journal at all
    empty = home.parent / "empty-home"
    proc = mlrb(empty, "export", "x", "--format", "html", check=False)
    assert proc.returncode == 1 and "no journal at" in proc.stderr


def _read_inspect(home: Path, run: str, logs: Path) -> Any:
    from inspect_ai.log import list_eval_logs, read_eval_log

    logs.mkdir(parents=True, exist_ok=True)
    mlrb(home, "export", run, "--format", "inspect", "-o", str(logs) + "/")
    found = list_eval_logs(str(logs))
    assert len(found) == 1, found  # `inspect view --log-dir` lists it by its name
    return read_eval_log(found[0].name)


def test_the_inspect_log_reads_back_with_inspect_ai(journal_home: tuple[Path, str, str]) -> None:
    home, scripted, llm = journal_home
    events = _events(home / "mlrb.db", llm)
    log = _read_inspect(home, llm, home.parent / "logs-llm")
    assert log.version == 2 and log.status == "success"
    assert log.eval.task == "tiny_train" and log.eval.model == "openai/gpt-4o"
    assert log.eval.dataset.samples == 1 and log.eval.config.working_limit == 300
    assert log.eval.config.turn_limit == 8
    assert log.samples is not None and len(log.samples) == 1
    sample = log.samples[0]
    assert sample.id == llm and sample.epoch == 1
    # the score, in the sample and in the results
    score = next(e.data for e in events if e.kind == "score" and e.data["final"])
    assert sample.scores is not None and sample.scores["mse_score"].value == score["value"]
    assert log.results is not None and log.results.scores[0].name == "mse_score"
    assert log.results.scores[0].metrics["mse_score"].value == score["value"]
    # the agent's turns as assistant messages with their calls; each result a tool message
    calls = [e.data for e in events if e.kind == "tool.call"]
    assistant = [m for m in sample.messages if m.role == "assistant"]
    sent = [tc for m in assistant for tc in (m.tool_calls or [])]
    assert [(tc.id, tc.function, tc.arguments) for tc in sent] == [
        (c["id"], c["name"], c["args"]) for c in calls]
    assert assistant[0].text == "I will write a small training script."
    tools = [m for m in sample.messages if m.role == "tool"]
    results = [e.data for e in events if e.kind == "tool.result"]
    assert [(m.tool_call_id, m.function) for m in tools] == [(r["id"], r["name"]) for r in results]
    assert "saved model/weights.pt" in tools[1].text
    from tasks.api import load_spec_file

    prompt = load_spec_file(FIXTURE).prompt("smoke")
    assert sample.input == prompt and sample.messages[0].role == "user"
    assert sample.messages[0].text == prompt
    # the operator's message, where the agent saw it
    steered = [m for m in sample.messages if m.role == "user" and STEER in m.text]
    assert len(steered) == 1 and steered[0].source == "operator"
    # the events: one model event a turn (its input resolved), one tool event a call
    kinds = [e.event for e in sample.events]
    assert kinds.count("model") == len(assistant) and kinds.count("tool") == len(calls)
    model_events = [e for e in sample.events if e.event == "model"]
    assert [len(e.input) for e in model_events][0] == 1 and len(model_events[-1].input) > 5
    assert any(e.event == "info" and e.source == "operator" for e in sample.events)
    assert any(e.event == "score" for e in sample.events)
    # tokens and cost
    usage = [e.data for e in events if e.kind == "usage"]
    total = log.stats.model_usage["openai/gpt-4o"]
    assert total.output_tokens == sum(u["output_tokens"] for u in usage) > 0
    assert total.total_tokens == sum(u["input_tokens"] + u["output_tokens"] for u in usage)
    assert total.total_cost == pytest.approx(sum(u["cost_usd"] for u in usage))
    assert sample.model_usage == log.stats.model_usage
    # no terminal escapes survive into the log
    assert "\x1b" not in json.dumps(log.model_dump(mode="json"))

    scripted_log = _read_inspect(home, scripted, home.parent / "logs-scripted")
    assert scripted_log.status == "success" and scripted_log.eval.model == "scripted/baseline"
    assert scripted_log.samples is not None and len(scripted_log.samples) == 1
    scripted_calls = [e.data["name"] for e in _events(home / "mlrb.db", scripted)
                      if e.kind == "tool.call"]
    assert [tc.function for m in scripted_log.samples[0].messages if m.role == "assistant"
            for tc in (m.tool_calls or [])] == scripted_calls


def test_inspect_statuses_and_limits_follow_the_run_end(tmp_path: Path) -> None:
    from inspect_ai.log import read_eval_log

    from runner.events import EventFactory

    home = tmp_path / "home"
    j = Journal(home / "mlrb.db")
    for run, status, extra in (("ends-killed", "killed", [("tool.call", {
                                   "id": "c1", "name": "bash", "args": {"command": "sleep 1d"}})]),
                               ("ends-failed", "failed", []),
                               ("ends-limit", "limit", [("run.limit", {
                                   "limit": "steps", "used": 3, "max": 3, "fraction": 1.0,
                                   "level": "reached"})])):
        f = EventFactory(run)
        evs = [f.make("run.created", {"task": "tiny_train", "agent": "scripted", "model": "baseline",
                                      "limits": {"steps": 3.0}}), f.make("run.started", {})]
        evs += [f.make(kind, data) for kind, data in extra]
        evs.append(f.make("run.ended", {"status": status, "reason": f"why {status}"}))
        j.write_sync(evs)
    j.close()
    want = {"ends-killed": "cancelled", "ends-failed": "error", "ends-limit": "success"}
    for run, status in want.items():
        out = tmp_path / f"{run}.json"
        mlrb(home, "export", run, "--format", "inspect", "-o", str(out))
        log = read_eval_log(str(out))
        assert log.status == status and log.samples is not None
        sample = log.samples[0]
        if status == "error":
            assert log.error is not None and log.error.message == "why failed"
            assert sample.error is not None and sample.error.message == "why failed"
        if status == "cancelled":  # killed during a call: the call is cancelled, not lost
            tool = [e for e in sample.events if e.event == "tool"]
            assert len(tool) == 1 and (tool[0].id, tool[0].function) == ("c1", "bash")
            assert tool[0].arguments == {"command": "sleep 1d"}
            assert tool[0].error is not None and tool[0].error.type == "cancelled"
        if run == "ends-limit":
            assert sample.limit is not None and (sample.limit.type, sample.limit.limit) == ("turn", 3)
            assert any(e.event == "sample_limit" for e in sample.events)


# -- the HTML page in a real browser ---------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    exe = _chromium()
    assert exe is not None
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-extensions", *args],
                          capture_output=True, text=True, timeout=timeout)


def _png_pixels(path: Path) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct RGB(A) pixels of an 8-bit non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            head = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour = struct.unpack(">IIBB", head[:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    seen: set[bytes] = set()
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(0, stride, bpp * 7):  # a sample of each row is enough to see ink
            seen.add(bytes(line[x:x + 3]))
        prev = line
    return w, h, seen


def test_the_html_page_draws_its_charts_in_a_real_browser(journal_home: tuple[Path, str, str]) -> None:
    require(_chromium() is not None, "chromium (apt-get install chromium)")
    home, scripted, llm = journal_home
    page = home.parent / "page" / "run.html"
    mlrb(home, "export", llm, "--format", "html", "-o", str(page))
    text = page.read_text()
    # self-contained: nothing to fetch, no script at all
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script" not in text.lower().replace("&lt;script", "")
    dom = _browser("--dump-dom", page.as_uri()).stdout
    assert "<title>" in dom and llm in dom
    # the training loss chart: a polyline with one point per logged step
    losses = [e for e in _events(home / "mlrb.db", llm) if e.kind == "metric" and "loss" in e.data["values"]]
    assert len(losses) >= 12
    chart = re.search(r'<figure data-series="loss" data-points="(\d+)">.*?</figure>', dom, re.S)
    assert chart is not None and int(chart.group(1)) == len(losses)
    points = re.search(r'<polyline class="series"[^>]* points="([^"]+)"', chart.group(0))
    assert points is not None
    xy = [tuple(float(v) for v in p.split(",")) for p in points.group(1).split()]
    assert len(xy) == len(losses) and len({y for _, y in xy}) > 1  # a line that moves
    # the timeline: the calls, their results and the operator's message
    assert "write_file" in dom and "python3 train.py 12" in dom
    assert "operator.message" in dom and OPERATOR in dom and html.escape(STEER) in dom
    assert 'id="timeline-cut"' not in dom  # short enough to be shown whole
    # the injection is text: the browser made no element of it, and the title is untouched
    assert "pwned" not in dom.split("<body")[0]
    assert "<script>document.title" not in dom and "<img src=\"x\"" not in dom
    assert "&lt;script&gt;document.title=\"pwned\"&lt;/script&gt;" in dom
    assert "&lt;img src=x onerror=" in dom and "&lt;b&gt;bold&lt;/b&gt;" in dom
    assert "\x1b" not in dom and "red" in dom and "[31m" not in dom
    # the scripted baseline's page too: its loss chart has a point per training step
    scripted_page = home.parent / "page" / "scripted.html"
    mlrb(home, "export", scripted, "--format", "html", "-o", str(scripted_page))
    scripted_dom = _browser("--dump-dom", scripted_page.as_uri()).stdout
    assert re.search(r'<figure data-series="loss" data-points="6">', scripted_dom)
    assert "submit" in scripted_dom and "mse_score" in scripted_dom
    # a real rendering: a screenshot with the page's ink on it
    shot = home.parent / "page" / "shot.png"
    _browser(f"--screenshot={shot}", "--window-size=800,1000", page.as_uri())
    w, h, colours = _png_pixels(shot)
    assert (w, h) == (800, 1000) and len(colours) > 8


def test_a_long_timeline_is_cut_and_says_so(journal_home: tuple[Path, str, str]) -> None:
    from runner.export import html_report, load_record

    home, _, llm = journal_home
    reader = JournalReader(home / "mlrb.db")
    try:
        record = load_record(reader, llm)
        page = html_report(record, max_timeline=10)
        last_seq = reader.max_seq(llm)
    finally:
        reader.close()
    rows = re.findall(r'<tr class="[^"]*" data-seq="(\d+)">', page)
    assert len(rows) == 10
    seqs = [int(s) for s in rows]
    assert seqs == sorted(seqs) and seqs[-1] == last_seq  # first and last kept
    cut = re.search(r'id="timeline-cut">(\d+) entries: the first 5 and the last 5 are shown; '
                    r"(\d+) in between are left out", page)
    assert cut is not None and int(cut.group(1)) - 10 == int(cut.group(2)) > 0


def test_a_long_series_is_thinned_and_says_so() -> None:
    from runner.events import EventFactory
    from runner.export import RunRecord, html_report
    from runner.export.html_report import MAX_POINTS

    f = EventFactory("many-points")
    events = [f.make("run.created", {"task": "tiny_train"}, ts=1000.0)]
    events += [f.make("metric", {"step": i, "values": {"loss": 1 / i}}, ts=1000.0 + i)
               for i in range(1, 5001)]
    events += [f.make("metric", {"values": {"<i>rate</i>": 0.5}}, ts=1001.0),
               f.make("metric", {"values": {"<i>rate</i>": 0.25}}, ts=1002.0)]
    page = html_report(RunRecord(row={"run": "many-points", "status": "running"}, events=events))
    chart = re.search(r'<figure data-series="loss" data-points="(\d+)">(.*?)</figure>', page, re.S)
    assert chart is not None and 100 < int(chart.group(1)) <= MAX_POINTS + 1
    assert "5000 points, every 16th drawn" in chart.group(2)
    points = re.search(r'points="([^"]+)"', chart.group(2))
    assert points is not None and len(points.group(1).split()) == int(chart.group(1))
    # the newest point is always drawn: the line ends at the right edge, at the lowest loss
    last = points.group(1).split()[-1]
    assert last == max(points.group(1).split(), key=lambda p: float(p.split(",")[0]))
    # a metric without steps is drawn against time, and its untrusted name is escaped
    rate = re.search(r'<figure data-series="&lt;i&gt;rate&lt;/i&gt;" data-points="2">(.*?)</figure>',
                     page, re.S)
    assert rate is not None and ">seconds</text>" in rate.group(1) and "<i>" not in page
