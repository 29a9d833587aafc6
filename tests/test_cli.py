"""The `mlrb` command line end to end, as a user runs it: a real daemon process with its
embedded Mosquitto, real sandboxes, control over the bus, the journal in sqlite3."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runner.bus import BusConfig
from runner.bus_options import local_bus
from runner.config import Config
from tests.conftest import alive, pids_naming, raw_client, require, until, until_blocking

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


def mlrb(env, *args, timeout=300, check=True):
    proc = subprocess.run([sys.executable, "-m", "mlrb_tui.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlrb {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def env(tmp_path):
    e = {**os.environ, "MLRB_HOME": str(tmp_path / "home"), "MLRB_TASKS_PATH": str(FIXTURE_TASKS),
         "MLRB_OPERATOR": "ana@ops", "PYTHONUNBUFFERED": "1"}
    e.pop("MLRB_BUS_URL", None)
    yield e
    subprocess.run([sys.executable, "-m", "mlrb_tui.cli", "down"], env=e, capture_output=True, timeout=120)


def runs_json(env):
    return {r["run"]: r for r in json.loads(mlrb(env, "runs", "--json").stdout)}


def wait_status(env, run, statuses, timeout=180):
    def reached():
        row = runs_json(env).get(run)
        return row if row and row["status"] in statuses else None
    return until_blocking(reached, f"{run} to reach {statuses}", timeout=timeout, interval=0.5)


def test_tasks_listing_and_a_clear_error_for_an_unknown_task(env):
    out = mlrb(env, "tasks").stdout
    assert "tiny_train" in out
    bad = mlrb(env, "submit", "no_such_task", check=False)
    assert bad.returncode != 0 and "unknown task 'no_such_task'" in bad.stderr
    assert "no runner daemon" in mlrb(env, "pause", "x", check=False).stderr


def test_headless_demo_runs_to_the_end_and_prints_a_summary(env, tmp_path):
    proc = mlrb(env, "demo", "--headless", "--task", "tiny_train", "--runs", "2", timeout=600)
    assert proc.stdout.count("succeeded") == 2, proc.stdout + proc.stderr
    assert "mse_score=" in proc.stdout
    db = tmp_path / "home" / "mlrb.db"
    out = subprocess.run(["sqlite3", str(db), "select status, count(*) from runs group by status"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "succeeded|2"
    shown = mlrb(env, "tasks", "show", "tiny_train").stdout
    assert "(2 of 2 runs succeeded" in shown and "scripted (smoke)" in shown
    assert "paper:" in mlrb(env, "tasks", "show", "mini_pile").stdout


def test_a_config_typo_or_a_wrong_type_stops_every_command_with_one_line(env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = home / "config.toml"
    config.write_text("[consle]\nrepaint_hz = 4\n")
    for args in (("status",), ("up",), ("runs",)):
        proc = mlrb(env, *args, check=False)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines() == [
            f"Error: {config}: unknown key 'consle' (known: alarms, bus, console, hub, notify, providers, runner, sandbox)"]
    config.write_text('[console]\nrepaint_hz = "fast"\n')
    proc = mlrb(env, "status", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"Error: {config}: console.repaint_hz must be a number, got 'fast'"]
    assert not (home / "daemon.json").exists()


def test_without_mosquitto_up_fails_fast_with_the_install_hint(env, tmp_path):
    env = {**env, "PATH": "/usr/bin:/bin", "MLRB_MOSQUITTO": str(tmp_path / "nowhere" / "mosquitto"),
           "MLRB_SANDBOX": "local"}
    for args in (("up",), ("demo",), ("demo", "--headless", "--task", "tiny_train")):
        proc = mlrb(env, *args, check=False, timeout=60)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert all(way in lines[0] for way in ("apt-get install mosquitto", "brew install mosquitto",
                                               "eclipse-mosquitto")), lines[0]
        assert not (tmp_path / "home").exists()  # nothing started: no daemon, no journal, no log
    proc = mlrb(env, "demo", "--headless", "--no-bus", "--task", "tiny_train", "--runs", "1", timeout=300)
    assert proc.stdout.count("succeeded") == 1, proc.stdout + proc.stderr


@pytest.mark.docker
def test_daemon_submit_freeze_resume_kill_down(env, tmp_path, docker_client):
    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    env = {**env, "TINY_STEPS": "400", "TINY_DELAY": "0.1"}
    up = mlrb(env, "up").stdout
    assert "up (pid" in up and "mosquitto" in up
    info = json.loads((tmp_path / "home" / "daemon.json").read_text())
    run = mlrb(env, "submit", "tiny_train").stdout.strip()
    assert run.startswith("tiny_train-")
    row = wait_status(env, run, {"running"})
    until_blocking(lambda: runs_json(env)[run]["metric_name"], f"a metric of {run}", timeout=180,
                   interval=0.3)
    assert row["sandbox"] == "docker"

    mlrb(env, "pause", run, "--freeze", "--reason", "inspect the loss")
    wait_status(env, run, {"frozen"})
    paused = subprocess.run(["docker", "inspect", "-f", "{{.State.Paused}}", f"mlrb-{run}"],
                            capture_output=True, text=True).stdout.strip()
    assert paused == "true"
    mlrb(env, "resume", run)
    wait_status(env, run, {"running"})
    mlrb(env, "kill", run, "--reason", "enough for today")
    row = wait_status(env, run, {"killed"})
    assert row["reason"] == "enough for today"

    db = tmp_path / "home" / "mlrb.db"
    audit = subprocess.run(["sqlite3", str(db), f"select action, operator, reason from interventions "
                            f"where run = '{run}' order by seq"], capture_output=True, text=True).stdout
    assert audit.split("\n")[:3] == ["freeze|ana@ops|inspect the loss", "resume|ana@ops|", "kill|ana@ops|enough for today"]
    acks = subprocess.run(["sqlite3", str(db), f"select count(*) from events where run = '{run}' "
                           "and kind = 'control.ack' and json_extract(data, '$.accepted')"],
                          capture_output=True, text=True).stdout.strip()
    assert acks == "3"

    assert "stopped" in mlrb(env, "down").stdout
    assert not (tmp_path / "home" / "daemon.json").exists()
    assert not alive(info["pid"])  # ended (a zombie its parent has not reaped yet counts as ended)




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_embedded_broker_dies_with_a_killed_daemon(env, tmp_path):
    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    env = {**env, "MLRB_SANDBOX": "local"}
    conf = str(tmp_path / "home" / "broker" / "mosquitto.conf")
    daemon = broker = 0
    try:
        assert "mosquitto" in mlrb(env, "up").stdout
        info = json.loads((tmp_path / "home" / "daemon.json").read_text())
        home = tmp_path / "home"  # every transcript and the bus passwords: private
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for private in ("daemon.json", "daemon.log", "mlrb.db", "broker/credentials.json"):
            assert stat.S_IMODE((home / private).stat().st_mode) == 0o600, private
        assert "account: " in mlrb(env, "status").stdout
        daemon = info["pid"]
        assert info["bus_url"].startswith("mqtt://127.0.0.1:")
        brokers = pids_naming(f"-c {conf}")
        assert len(brokers) == 1, brokers
        broker = brokers[0]
        os.kill(daemon, signal.SIGKILL)
        until_blocking(lambda: not alive(broker), "the broker to end with the daemon", timeout=10)
        assert not pids_naming(f"-c {conf}")
    finally:
        for pid in (daemon, broker):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


async def apublish(config: BusConfig, messages: list[tuple[str, bytes]]) -> None:
    """Publish raw payloads at QoS 1 as `config`'s account (a forger, or a stand-in runner)."""
    async with raw_client(config) as c:
        for topic, payload in messages:
            await c.publish(topic, payload, qos=1)


def publish(config: BusConfig, messages: list[tuple[str, bytes]]) -> None:
    import asyncio

    asyncio.run(apublish(config, messages))


def test_status_shows_each_runners_bus_counts_and_rejects_by_reason(env, tmp_path):
    require(Path("/usr/sbin/mosquitto").exists(), "mosquitto")
    from runner.bus import Topics

    env = {**env, "MLRB_SANDBOX": "local"}
    mlrb(env, "up")
    info = json.loads((tmp_path / "home" / "daemon.json").read_text())
    t = Topics(info["prefix"])
    # an operator account may publish controls and jobs: its bad ones reach the runner
    operator = local_bus(Config(home=tmp_path / "home"), info["bus_url"], info["prefix"], "operator")
    publish(operator, [(t.control("run-x", str(operator.username)), b"{not json")] * 3
            + [(t.jobs_of(str(operator.username)), b'{"task": 7}')] * 2
            + [(t.jobs_of(str(operator.username)), b"\xff")])

    def counted():
        runner = json.loads(mlrb(env, "status", "--json").stdout)["runners"].get(info["runner_id"])
        return runner if runner and runner["bus"] and sum(runner["bus"]["rejects"].values()) == 6 else None
    runner = until_blocking(counted, "the runner's state to count six rejects", timeout=30, interval=0.5)
    assert runner["state"] == "online" and runner["bus"]["rejects"] == {"bad_control": 3, "bad_job": 2,
                                                                         "bad_json": 1}
    assert runner["bus"]["reconnects"] == 0 and runner["bus"]["resent"] == 0
    text = mlrb(env, "status").stdout
    assert f"runner:  {info['runner_id']} online, 0 live run(s)" in text
    assert "  bus:      0 published, 0 resent, 0 repaired, 0 reconnects" in text
    assert "  rejected: bad_control 3, bad_job 2, bad_json 1" in text


async def test_record_keeps_its_session_under_its_client_id_and_a_clean_start_drops_it(env, tmp_path, mosquitto):
    from runner.bus import Topics
    from runner.events import EventFactory, encode_batch
    from runner.journal import JournalReader

    db = tmp_path / "fleet.db"
    topic = Topics("mlrb/v1").event("host-a", "run-a")
    runner = mosquitto.config("host-a")  # the run's events come from its runner's account
    viewer = mosquitto.config("viewer")  # the recorder reads as a viewer
    env = {**env, "MLRB_BUS_USERNAME": str(viewer.username), "MLRB_BUS_PASSWORD": str(viewer.password)}
    f = EventFactory("run-a")
    events = [f.make("sandbox.output", {"stream": "stdout", "text": f"line {i}"}) for i in range(6)]

    def seqs() -> list[int]:
        if not db.exists():
            return []
        reader = JournalReader(db)
        try:
            return [e.seq for e in reader.events("run-a", 0, 100)]
        finally:
            reader.close()

    def recording(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "mlrb_tui.cli", "record", "--db", str(db), "--bus",
                                 mosquitto.url, "--client-id", "rec-test", *extra], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(proc: subprocess.Popen[str]) -> str:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        return out

    async def until_recorded(seq: int, *, resend: bool) -> None:
        async def there() -> bool:
            if resend:  # until its subscription is in place, a message reaches nobody
                await apublish(runner, [(topic, encode_batch([events[seq - 1]]))])
            return seq in seqs()
        await until(there, f"seq {seq} recorded", timeout=30, interval=0.3)

    proc = recording()
    await until_recorded(1, resend=True)
    out = stop(proc)
    assert "session rec-test, kept 86400 s" in out and "recorded" in out and "rejected 0" in out
    await apublish(runner, [(topic, encode_batch(events[1:3]))])  # while it is away: queued
    proc = recording()
    await until_recorded(3, resend=False)
    stop(proc)
    await apublish(runner, [(topic, encode_batch(events[3:5]))])  # queued again, then dropped
    proc = recording("--clean-start")
    await until_recorded(6, resend=True)
    out = stop(proc)
    assert "clean start" in out
    assert seqs() == [1, 2, 3, 6]
    bad = mlrb(env, "record", "--db", str(db), "--bus", mosquitto.url, "--client-id", "x" * 65, check=False)
    assert bad.returncode != 0 and "--client-id must be 1 to 64 printable bytes" in bad.stderr
