"""Notifications: a real engine's runs call a stand-in webhook on loopback through Apprise
(`json://127.0.0.1:PORT/hook`), once per run per kind within the window and in one digest
under a flood; each send is a `notify.sent` event; a failing or slow target changes nothing
for the run; an open console rings the bell and sends OSC 9 for the same triggers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlrb_tui.notify import BEL, ConsoleBell, osc9
from runner.config import AlarmsTable, BusTable, Config, ConfigError, NotifyTable, load_config
from runner.control import ControlCommand
from runner.embedded_broker import find_mosquitto
from runner.engine import Engine, Job
from runner.event_data import NotifySentData
from runner.events import Event, EventFactory
from runner.journal import JournalReader
from runner.notify import Gate, alert_for
from tests.conftest import Mosquitto, require, until
from tests.fixtures.console_app import Feed, make_app, started
from tests.fixtures.console_app import until as pilot_until
from tests.fixtures.demo_journal import NOW

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


# -- the stand-in webhook ------------------------------------------------------------------
class Hook:
    """A webhook on loopback: records each POST's JSON; answers `status`; with `hold` set,
    keeps each request waiting until `release` is set."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        self.hold = False
        self.waiting = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if hook.hold:
                    with hook._lock:
                        hook.waiting += 1
                    hook.release.wait(30)
                with hook._lock:
                    hook.posts.append({"path": self.path, **json.loads(body)})
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"json://127.0.0.1:{self.port}{path}"

    def titles(self) -> list[str]:
        with self._lock:
            return [p["title"] for p in self.posts]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- tasks and engines ---------------------------------------------------------------------
PLAN = '''
def plan(scale):
    return {plan!r}
'''


def make_task(root: Path, name: str, plan: list[dict[str, Any]], integrity: list[str] = ()) -> None:
    """A copy of the tiny_count fixture with its own plan (and integrity checks)."""
    dest = root / name
    shutil.copytree(FIXTURE_TASKS / "tiny_count", dest)
    toml = (dest / "task.toml").read_text().replace('name = "tiny_count"', f'name = "{name}"')
    if integrity:
        toml = toml.replace("[smoke]", f"integrity = {json.dumps(list(integrity))}\n\n[smoke]")
    (dest / "task.toml").write_text(toml)
    (dest / "baseline.py").write_text(PLAN.format(plan=plan))


ANSWER = {"name": "bash", "args": {"command": "mkdir -p model; seq 1 3 > model/answer.txt"}}
SUBMIT = {"name": "submit", "args": {"path": "model", "summary": "three lines"}}
NOOP = {"name": "bash", "args": {"command": "true"}}


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tasks"
    root.mkdir()
    make_task(root, "five_steps", [ANSWER, NOOP, NOOP, NOOP, SUBMIT])
    make_task(root, "flagged", [ANSWER, SUBMIT], integrity=["no_model"])
    make_task(root, "two_calls", [ANSWER, SUBMIT])
    make_task(root, "quiet", [{"name": "bash", "args": {"command": "sleep 3"}}, ANSWER, SUBMIT])
    monkeypatch.setenv("MLRB_TASKS_PATH", f"{root}:{FIXTURE_TASKS}")
    return root


def engine(tmp_path: Path, notify: NotifyTable, **cfg: Any) -> Engine:
    cfg.setdefault("backend", "local")
    cfg.setdefault("max_runs", 8)
    return Engine(Config(home=tmp_path / "h", notify=notify, **cfg), use_bus=False)


def events(eng: Engine, run: str, kind: str | None = None) -> list[Event]:
    reader = JournalReader(eng.cfg.db_path)
    try:
        return reader.events(run, 0, 100_000, kinds=[kind] if kind else None)
    finally:
        reader.close()


def sent(eng: Engine, run: str) -> list[NotifySentData]:
    return [e.body for e in events(eng, run, "notify.sent") if isinstance(e.body, NotifySentData)]


def status(eng: Engine, run: str) -> str:
    reader = JournalReader(eng.cfg.db_path)
    try:
        row = reader.get_run(run)
    finally:
        reader.close()
    return row["status"] if row else ""


async def pending_call(eng: Engine, run: str, after: int = 0) -> str:
    """The id of the run's tool call waiting for approval, past seq `after`."""
    evs = await until(lambda: [e for e in events(eng, run, "tool.approval")
                               if e.seq > after and e.data["state"] == "pending"],
                      f"a call of {run} waiting for approval", timeout=60)
    call = str(evs[0].data["id"])
    # journaled just before the supervisor waits on it: an approval must find it waiting
    await until(lambda: call in eng.supervisors[run].approvals, f"{call} waiting", timeout=60)
    return call


async def finish(eng: Engine, runs: list[str]) -> dict[str, str]:
    """The runs' ends; a run that never ends fails the test instead of hanging it."""
    return await asyncio.wait_for(eng.wait(runs), 240)


async def approve(eng: Engine, run: str, call: str) -> None:
    await eng.handle_control(ControlCommand(run=run, action="approve", operator="ana",
                                            args={"call_id": call}))


# -- a real engine's triggers --------------------------------------------------------------
async def test_each_trigger_is_posted_once_and_recorded_on_its_run(tmp_path, tasks, hook):
    eng = engine(tmp_path, NotifyTable(urls=[hook.url()], digest_after=100),
                 alarms=AlarmsTable(quiet_min=1 / 60))  # a second of quiet is a stall here
    await eng.start()
    try:
        approved = await eng.submit(Job(task="two_calls", approval=True))
        limited = await eng.submit(Job(task="five_steps", limits={"steps": 5}))
        flagged = await eng.submit(Job(task="flagged"))
        quiet = await eng.submit(Job(task="quiet"))
        first = await pending_call(eng, approved)
        await approve(eng, approved, first)
        # the second call waits too, within the window: no second post for it
        second = await pending_call(eng, approved, after=max(
            e.seq for e in events(eng, approved, "tool.approval") if e.data["id"] == first))
        assert second != first
        await approve(eng, approved, second)
        results = await finish(eng, [approved, limited, flagged, quiet])
    finally:
        await eng.stop()
    assert results == {approved: "succeeded", limited: "succeeded", flagged: "succeeded",
                       quiet: "succeeded"}
    expected = {approved: {"approval", "ended"}, limited: {"limit", "ended"},
                flagged: {"integrity", "ended"}, quiet: {"stall", "ended"}}
    recorded: list[str] = []
    for run, kinds in expected.items():
        notes = sent(eng, run)
        seen = [n.kind for n in notes]
        assert kinds <= set(seen), (run, seen)
        assert len(seen) == len(set(seen)), f"{run}: a kind notified twice within the window: {seen}"
        assert all(n.result == "ok" and n.error is None and n.digest is None for n in notes)
        assert {n.channel for n in notes} == {f"json://127.0.0.1:{hook.port}/hook"}
        recorded += [n.title for n in notes]
        # each names the event that raised it
        by_seq = {e.seq: e for e in events(eng, run)}
        ended = next(n for n in notes if n.kind == "ended")
        assert ended.trigger_seq is not None and by_seq[ended.trigger_seq].kind == "run.ended"
    # what the webhook got is what the journal says was sent, each once
    assert sorted(hook.titles()) == sorted(recorded)
    assert all(p["path"] == "/hook" for p in hook.posts)
    titles = hook.titles()
    assert f"MLRB: {approved}: a bash call waits for approval" in titles
    assert f"MLRB: {limited}: 80% of its steps limit used" in titles
    assert f"MLRB: {flagged}: integrity flag no_model" in titles
    assert f"MLRB: {quiet}: stalled" in titles
    assert f"MLRB: {quiet} ended succeeded" in titles
    body = next(p["message"] for p in hook.posts if p["title"].endswith("integrity flag no_model"))
    assert "holds no Hugging Face model" in body


async def test_a_flood_of_ends_is_one_digest(tmp_path, monkeypatch, hook):
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_COUNT_DELAY", "600")
    n, alone = 50, 3
    eng = engine(tmp_path, NotifyTable(urls=[hook.url()], digest_after=alone, digest_s=15),
                 max_runs=n)
    await eng.start()
    try:
        runs = [await eng.submit(Job(task="tiny_count")) for _ in range(n)]
        await until(lambda: all(events(eng, r, "tool.call") for r in runs),
                    "every run's command started", timeout=240)
        await asyncio.gather(*(eng.handle_control(ControlCommand(
            run=r, action="kill", operator="ana", reason="flood")) for r in runs))
        assert set((await finish(eng, runs)).values()) == {"killed"}
        await until(lambda: len(hook.posts) >= alone + 1, "the digest", timeout=60)
    finally:
        await eng.stop()
    titles = hook.titles()
    assert len(titles) == alone + 1, titles  # far fewer posts than ends
    digest = [p for p in hook.posts if "notifications at once" in p["title"]]
    assert len(digest) == 1 and digest[0]["title"] == f"MLRB: {n - alone} notifications at once"
    lines = digest[0]["message"].splitlines()
    assert lines[-1] == f"- … and {n - alone - 40} more" and len(lines) == 41
    # every run's end was told, once: alone or in the digest
    notes = {r: sent(eng, r) for r in runs}
    assert all(len(v) == 1 and v[0].kind == "ended" and v[0].result == "ok" for v in notes.values())
    assert sorted(v[0].digest or 0 for v in notes.values()) == [0] * alone + [n - alone] * (n - alone)


async def test_a_failing_target_is_recorded_and_the_run_goes_on(tmp_path, tasks, hook):
    hook.status = 500
    dead = f"json://127.0.0.1:{closed_port()}/gone"
    eng = engine(tmp_path, NotifyTable(urls=[hook.url("/broken"), dead]))
    await eng.start()
    try:
        run = await eng.submit(Job(task="five_steps", limits={"steps": 5}))
        assert await finish(eng, [run]) == {run: "succeeded"}
    finally:
        await eng.stop()
    notes = sent(eng, run)
    assert sorted((n.kind, n.channel) for n in notes) == sorted(
        (k, c) for k in ("limit", "ended") for c in (f"json://127.0.0.1:{hook.port}/broken",
                                                     dead.split("?")[0]))
    assert all(n.result == "failed" and n.error for n in notes)
    assert any("500" in (n.error or "") for n in notes if n.channel.endswith("/broken"))
    assert all("connection error" in (n.error or "").lower() for n in notes if n.channel.endswith("/gone"))
    assert len(hook.posts) == 2  # the 500s were asked once each: no retry storm
    assert eng.notifier.failed == 4 and eng.notifier.sent == 0


async def test_a_slow_target_does_not_hold_up_the_run(tmp_path, tasks, hook):
    hook.hold = True
    # rto: Apprise waits this long for an answer (4 s by default)
    eng = engine(tmp_path, NotifyTable(urls=[hook.url() + "?rto=60"]))
    await eng.start()
    try:
        run = await eng.submit(Job(task="five_steps", limits={"steps": 5}))
        # the limit's post waits at the target while the run goes on to its end
        await until(lambda: hook.waiting >= 1, "the limit's post at the target", timeout=60)
        assert await finish(eng, [run]) == {run: "succeeded"}
        assert hook.posts == [] and sent(eng, run) == []
        hook.release.set()
        await until(lambda: len(sent(eng, run)) == 2, "both notifications recorded", timeout=30)
    finally:
        await eng.stop()
    kinds = {e.data["kind"]: e.seq for e in events(eng, run, "notify.sent")}
    ended = events(eng, run, "run.ended")[0].seq
    assert kinds["limit"] > ended  # recorded when the target answered, after the run had ended


async def test_kinds_turned_off_are_not_sent(tmp_path, tasks, hook):
    eng = engine(tmp_path, NotifyTable(urls=[hook.url()], kinds={"ended": False}))
    await eng.start()
    try:
        run = await eng.submit(Job(task="five_steps", limits={"steps": 5}))
        await finish(eng, [run])
    finally:
        await eng.stop()
    assert hook.titles() == [f"MLRB: {run}: 80% of its steps limit used"]
    assert [n.kind for n in sent(eng, run)] == ["limit"]


async def test_no_urls_send_nothing_and_record_nothing(tmp_path, tasks):
    eng = engine(tmp_path, NotifyTable())
    await eng.start()
    try:
        run = await eng.submit(Job(task="five_steps", limits={"steps": 5}))
        assert await finish(eng, [run]) == {run: "succeeded"}
    finally:
        await eng.stop()
    assert sent(eng, run) == [] and eng.notifier.channel_names == []


@pytest.mark.mosquitto
async def test_the_broker_lost_is_posted_logged_and_recorded_on_each_live_run(
        tmp_path, monkeypatch, hook, mosquitto: Mosquitto, caplog):
    monkeypatch.setenv("MLRB_TASKS_PATH", str(FIXTURE_TASKS))
    monkeypatch.setenv("TINY_COUNT_DELAY", "600")
    cred = mosquitto.accounts["h"]
    cfg = Config(home=tmp_path / "h", bus_url=mosquitto.url, backend="local",
                 bus=BusTable(username=cred.username, password=cred.password),
                 notify=NotifyTable(urls=[hook.url()], broker_after_s=0.5))
    eng = Engine(cfg, runner_id="h")
    caplog.set_level(logging.INFO, logger="runner.notify")
    await eng.start()
    try:
        runs = [await eng.submit(Job(task="tiny_count")) for _ in range(2)]
        await until(lambda: eng.publisher.connected, "the runner on the bus")
        await until(lambda: all(events(eng, r, "tool.call") for r in runs), timeout=60)
        assert hook.posts == []
        mosquitto.proc.terminate()
        mosquitto.proc.wait(timeout=10)
        await until(lambda: hook.posts, "the broker-lost post", timeout=30)
        await until(lambda: all(sent(eng, r) for r in runs), "recorded on each live run")
        for r in runs:
            await eng.handle_control(ControlCommand(run=r, action="kill", operator="ana"))
        await finish(eng, runs)
    finally:
        await eng.stop()
    assert hook.titles()[0] == "MLRB: runner h lost its broker"
    assert "without its broker" in hook.posts[0]["message"]
    for r in runs:
        broker = [n for n in sent(eng, r) if n.kind == "broker"]
        assert len(broker) == 1 and broker[0].result == "ok" and broker[0].trigger_seq is None
    assert any("has lost its broker" in rec.getMessage() for rec in caplog.records)


# -- the configuration ---------------------------------------------------------------------
def write(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    return path


def test_the_notify_table_is_read_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("MLRB_CONFIG", raising=False)
    home = tmp_path / "home"
    write(home, '[notify]\nurls = ["json://127.0.0.1:9/h", "ntfy://lab"]\nwindow_s = 60\n'
                'kinds = {stall = false}\ndigest_after = 2\ndigest_s = 5\nconsole = false\n')
    n = load_config(home).notify
    assert n.urls == ["json://127.0.0.1:9/h", "ntfy://lab"] and n.window_s == 60
    assert (n.digest_after, n.digest_s, n.console) == (2, 5, False)
    assert not n.enabled("stall") and n.enabled("ended") and n.enabled("broker")
    assert "lab" not in repr(load_config(home))  # a URL may hold a token
    for text, message in [
        ('[notify]\nkinds = {approvals = true}\n',
         "unknown key 'notify.kinds.approvals' (known: approval, broker, ended, integrity, "
         "limit, stall)"),
        ("[notify]\nwindow_s = -1\n", "notify.window_s must be at least 0"),
        ('[notify]\nurls = "json://x"\n', "notify.urls must be a list, got 'json://x'"),
        ('[notify]\nurls = ["hooks.slack.com/T0/B0"]\n',
         "notify.urls: Value error, urls[0] is not an Apprise URL (scheme://...)"),
        ("[notify]\ndigest_after = 0\n", "notify.digest_after must be at least 1"),
    ]:
        path = write(home, text)
        with pytest.raises(ConfigError) as caught:
            load_config(home)
        assert str(caught.value) == f"{path}: {message}"


async def test_a_url_apprise_does_not_know_stops_the_start(tmp_path):
    eng = engine(tmp_path, NotifyTable(urls=["json://127.0.0.1:9/ok", "nosuch://secret-token"]))
    with pytest.raises(ConfigError) as caught:
        await eng.start()
    assert str(caught.value).startswith("[notify] urls[1]: Apprise cannot send to this URL (nosuch://…)")
    assert "secret-token" not in str(caught.value)
    assert not (tmp_path / "h" / "mlrb.db").exists()  # nothing was opened


def test_mlrb_up_names_a_bad_url_and_starts_no_daemon(tmp_path):
    require(find_mosquitto() is not None, "mosquitto")
    home = tmp_path / "home"
    write(home, '[notify]\nurls = ["nosuch://token-123"]\n')
    env = {**os.environ, "MLRB_HOME": str(home)}
    env.pop("MLRB_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "up"], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "[notify] urls[0]: Apprise cannot send to this URL (nosuch://…)" in proc.stderr
    assert "token-123" not in proc.stderr and not (home / "daemon.json").exists()


# -- the gate and the words ----------------------------------------------------------------
def ended(run: str, seq: int = 9, reason: str = "") -> Event:
    return EventFactory(run, seq).make("run.ended", {"status": "failed", "reason": reason})


def test_the_gate_sends_one_per_run_and_kind_in_the_window_and_holds_a_flood():
    gate = Gate(window_s=60, digest_after=2, digest_s=10)
    a = alert_for(ended("r1"))
    assert a is not None
    assert gate.offer(a, 0) == "send"
    assert gate.offer(a, 30) == "repeat"  # the same run and kind within the window
    assert gate.offer(alert_for(ended("r2")), 31) == "send"  # type: ignore[arg-type]
    # r1's send at 0 is past digest_s: two more go alone (r2, x0), then they wait
    offers = [gate.offer(alert_for(ended(f"x{i}")), 32 + i) for i in range(3)]  # type: ignore[arg-type]
    assert offers == ["send", "held", "held"]
    assert gate.due(42) is None and gate.next_due == 43
    digest = gate.due(43)
    assert digest is not None and [x.run for x in digest.alerts] == ["x1", "x2"]
    assert gate.due(50) is None  # nothing waits any more
    assert gate.offer(a, 61) == "send"  # the window has passed
    assert gate.repeats == 1


def test_a_limit_is_told_once_per_run_even_past_the_window():
    gate = Gate(window_s=1, digest_after=10, digest_s=1)
    warn = EventFactory("r1").make("run.limit", {"limit": "steps", "used": 4, "max": 5,
                                                 "fraction": 0.8, "level": "warning"})
    again = EventFactory("r1", 7).make("run.limit", {"limit": "steps", "used": 8, "max": 10,
                                                     "fraction": 0.8, "level": "warning"})
    other = EventFactory("r1", 8).make("run.limit", {"limit": "time_s", "used": 8, "max": 10,
                                                     "fraction": 0.8, "level": "warning"})
    reached = EventFactory("r1", 9).make("run.limit", {"limit": "steps", "level": "reached"})
    assert [gate.offer(alert_for(e), t) for e, t in ((warn, 0), (again, 5), (other, 10))] == [  # type: ignore[arg-type]
        "send", "repeat", "send"]
    assert alert_for(reached) is None  # the run's end tells of it


def test_only_what_calls_an_operator_raises_an_alert():
    f = EventFactory("r1")
    quiet = [f.make("tool.approval", {"id": "c1", "state": "approved"}),
             f.make("run.warning", {"code": "not_isolated", "message": "local sandbox"}),
             f.make("metric", {"values": {"loss": 1.0}}),
             f.make("notify.sent", {"channel": "json://h", "kind": "ended", "result": "ok"})]
    assert [alert_for(e) for e in quiet] == [None] * 4
    evil = alert_for(ended("r1", reason="boom\x1b]9;pwned\x07\n\tnext"))
    assert evil is not None and "\x1b" not in evil.title + evil.body and "\x07" not in evil.body
    assert evil.body == "Run r1 ended failed: boom next."


# -- the console ---------------------------------------------------------------------------
def test_osc9_carries_only_printable_text():
    assert osc9("MLRB: r1 ended") == "\x1b]9;MLRB: r1 ended\x07"
    framed = osc9("a\x1b]9;evil\x07b\x9c\nc\x1b[2Jd" + "x" * 500)
    payload = framed[len("\x1b]9;"):-1]
    assert framed.startswith("\x1b]9;") and framed.endswith("\x07")
    assert not any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in payload)
    assert payload.startswith("ab cd") and len(payload) == 240


def test_the_console_bell_rings_once_for_alerts_that_fire_together():
    out: list[str] = []
    now = [1000.0]
    bell = ConsoleBell(NotifyTable(kinds={"stall": False}), out.append, clock=lambda: now[0],
                       monotonic=lambda: now[0])
    f, g = EventFactory("r1"), EventFactory("r2")
    bell.saw(f.make("run.ended", {"status": "succeeded"}, ts=now[0]))
    bell.saw(g.make("tool.approval", {"id": "c1", "state": "pending", "name": "bash"}, ts=now[0]))
    bell.saw(g.make("run.warning", {"code": "stalled", "message": "quiet"}, ts=now[0]))  # off
    bell.saw(EventFactory("r3").make("run.ended", {"status": "failed"}, ts=now[0] - 600))  # history
    assert bell.tick() == "\x1b]9;MLRB: 2 alerts: r1 ended succeeded; r2: a bash call waits for approval\x07" + BEL
    assert len(out) == 1 and bell.tick() == ""  # nothing new: nothing written
    bell.saw(g.make("tool.approval", {"id": "c2", "state": "pending", "name": "bash"}, ts=now[0]))
    assert bell.tick() == ""  # within the window
    off = ConsoleBell(NotifyTable(console=False), out.append)
    off.saw(f.make("run.ended", {"status": "failed"}))
    assert off.tick() == "" and len(out) == 1


async def test_an_open_console_rings_and_sends_osc9_for_live_events(tmp_path):
    feed = Feed()
    app = make_app(tmp_path, feed=feed, notify=NotifyTable())
    async with app.run_test(size=(150, 40)) as pilot:
        written: list[str] = []
        driver = app._driver
        assert driver is not None
        real = driver.write
        driver.write = lambda data: (written.append(data), real(data))[-1]  # type: ignore[method-assign]
        await started(pilot)
        await pilot.pause(0.3)
        assert not any("\x1b]9;" in w for w in written)  # the journal's history rings nothing
        f = EventFactory("r-live-9")
        feed.push(f.make("run.created", {"task": "tiny_count", "agent": "scripted"}, ts=NOW),
                  f.make("run.ended", {"status": "failed", "reason": "bad\x1b]9;x\x07"}, ts=NOW))
        await pilot_until(pilot, lambda: any("\x1b]9;" in w for w in written), "the OSC 9")
        rung = [w for w in written if "\x1b]9;" in w]
        assert rung == ["\x1b]9;MLRB: r-live-9 ended failed\x07\x07"]
