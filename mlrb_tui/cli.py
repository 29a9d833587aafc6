"""The `mlrb` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlrb_tui.cli_export import export
from mlrb_tui.cli_follow import register_follow
from runner.config import Config, ConfigError, DaemonInfo, load_config, read_daemon_info
from runner.control import LIMIT_NAMES

if TYPE_CHECKING:
    from tasks.api import TaskSpec

DEMO_TASKS = ("mini_pile", "baby_lm", "edge_llm_training")


def _cfg() -> Config:
    try:
        return load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _need_broker(cfg: Config) -> None:
    """Stop with the install hint when the embedded broker would be needed and is missing."""
    from runner.embedded_broker import INSTALL_HINT, find_mosquitto

    if not cfg.bus_url and find_mosquitto() is None:
        raise click.ClickException(INSTALL_HINT)


def _bus(info: DaemonInfo | None, cfg: Config, role: str = "operator") -> Any:
    """The bus as `role` (runner.bus_options decides how), or None when no broker is known."""
    from runner.bus_options import bus_options

    try:
        return bus_options(cfg, role, info)  # type: ignore[arg-type]
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _open_console(cfg: Config, *, readonly: bool = False, replay: str | None = None,
                  speed: float = 1.0) -> None:
    from mlrb_tui.app import run_console

    info = read_daemon_info(cfg)
    # a read-only console is a viewer on the broker too: its controls would be refused
    bus = None if replay else _bus(info, cfg, "viewer" if readonly else "operator")
    run_console(journal_path=cfg.db_path, bus=bus, readonly=readonly,
                replay_run=replay, replay_speed=speed, repaint_hz=cfg.repaint_hz,
                keymap=cfg.keys or None, notify=cfg.notify)


@click.group(invoke_without_command=True)
@click.option("--readonly", is_flag=True, help="Hide every control that changes a run.")
@click.pass_context
def cli(ctx: click.Context, readonly: bool) -> None:
    """MLRB Console: run AI agents on the ML Research Benchmark and watch them live.

    With no command, opens the console on the running daemon (or on the journal alone).
    """
    if ctx.invoked_subcommand is None:
        _open_console(_cfg(), readonly=readonly)


cli.add_command(export)


@cli.command()
@click.option("--readonly", is_flag=True, help="Hide every control that changes a run.")
def console(readonly: bool) -> None:
    """Open the console on the running daemon."""
    _open_console(_cfg(), readonly=readonly)


@cli.command()
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--readonly", is_flag=True, help="Hide every control that changes a run.")
def serve(port: int, host: str, readonly: bool) -> None:
    """Serve the console to a browser on loopback (tunnel it over SSH)."""
    from mlrb_tui.serve import ServeError, serve_console

    try:
        serve_console(host, port, readonly=readonly)
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
def up() -> None:
    """Start the runner daemon (runs survive the console and the SSH session)."""
    from runner.daemon import DaemonError, start_detached
    from runner.notify import channels

    cfg = _cfg()
    _need_broker(cfg)
    try:
        channels(cfg.notify.urls)  # a URL Apprise does not know is said here, not in the daemon's log
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        info = start_detached(cfg)
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"runner {info.runner_id} up (pid {info.pid}); broker {info.bus_url} ({info.broker}); "
               f"journal {info.db}")
    if info.adopted:
        click.echo(f"adopted {len(info.adopted)} live run(s): {', '.join(info.adopted)}")
    if info.orphans:
        click.echo(f"stopped {len(info.orphans)} sandbox(es) no live run owned: {', '.join(info.orphans)}")


@cli.command()
@click.option("--keep-runs", is_flag=True,
              help="Leave the live runs going in their sandboxes; the next `mlrb up` adopts them.")
def down(keep_runs: bool) -> None:
    """Stop the runner daemon; its live runs end as killed, with the reason (or go on, with
    --keep-runs)."""
    from runner.daemon import stop_daemon

    cfg = _cfg()
    if stop_daemon(cfg, keep_runs=keep_runs):
        click.echo("runner daemon stopped" + ("; its runs go on until `mlrb up`" if keep_runs else ""))
    else:
        click.echo("no runner daemon was running")


@cli.command()
def restart() -> None:
    """Restart the runner daemon (an upgrade) without ending its runs: `down --keep-runs`, then `up`."""
    from runner.daemon import DaemonError, start_detached, stop_daemon

    cfg = _cfg()
    _need_broker(cfg)
    stop_daemon(cfg, keep_runs=True)
    try:
        info = start_detached(cfg)
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"runner {info.runner_id} up (pid {info.pid}); adopted {len(info.adopted)} live run(s)"
               + (f": {', '.join(info.adopted)}" if info.adopted else ""))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(as_json: bool) -> None:
    """Say whether the daemon runs, where things live, and what each runner's bus has done:
    events resent and repaired, reconnects, and rejected payloads by reason."""
    from runner.bus import BusUnavailable, read_runner_states

    cfg = _cfg()
    info = read_daemon_info(cfg)
    bus = _bus(info, cfg)
    states: dict[str, Any] = {}
    bus_error = ""
    if bus is not None:
        try:
            states = asyncio.run(read_runner_states(bus))
        except BusUnavailable as exc:
            bus_error = str(exc)
    runners = {rid: _runner_status(s) for rid, s in sorted(states.items())}
    if as_json:
        daemon = None if info is None else {"pid": info.pid, "runner": info.runner_id,
                                            "bus_url": info.bus_url, "broker": info.broker}
        click.echo(json.dumps({"home": str(cfg.home), "journal": str(cfg.db_path), "daemon": daemon,
                               "runners": runners, "bus_error": bus_error or None}, indent=2))
        return
    click.echo(f"home:    {cfg.home}\njournal: {cfg.db_path}")
    if info is None:
        click.echo("daemon:  not running (`mlrb up` starts it)")
    else:
        click.echo(f"daemon:  pid {info.pid}, runner {info.runner_id}\nbroker:  {info.bus_url} ({info.broker})")
    if bus is not None and bus.username:
        click.echo(f"account: {bus.username} (commands and the console are recorded under it)")
    if bus_error:
        click.echo(f"bus:     {bus_error}")
    for rid, r in runners.items():
        live = f", {len(r['runs'])} live run(s)" if r["state"] == "online" else ""
        click.echo(f"runner:  {rid} {r['state']}{live}")
        counts = r["bus"]
        if counts is None:
            continue
        click.echo(f"  bus:      {counts['published']} published, {counts['resent']} resent, "
                   f"{counts['repaired']} repaired, {counts['reconnects']} reconnects")
        rejects = sorted(counts["rejects"].items(), key=lambda kv: (-kv[1], kv[0]))
        click.echo("  rejected: " + (", ".join(f"{reason} {n}" for reason, n in rejects) or "none"))


def _runner_status(state: dict[str, Any] | str) -> dict[str, Any]:
    """One runner's retained state as `mlrb status` shows it; its counts only if well-formed."""
    from pydantic import ValidationError

    from runner.bus import RunnerSeqs

    if not isinstance(state, dict):
        return {"state": state, "runs": [], "bus": None}
    try:
        counts = RunnerSeqs.model_validate(state).bus
    except ValidationError:
        counts = None
    runs = state.get("runs")
    return {"state": str(state.get("state", "online"))[:20],
            "runs": [str(r)[:80] for r in runs[:1000]] if isinstance(runs, list) else [],
            "bus": counts.model_dump() if counts is not None else None}


def _parse_limits(items: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in LIMIT_NAMES or not value:
            raise click.BadParameter(f"{item!r}: use time_s=, steps=, tokens= or cost_usd=", param_hint="--limit")
        try:
            out[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: not a number", param_hint="--limit") from None
        if out[name] <= 0:
            raise click.BadParameter(f"{item!r}: must be positive", param_hint="--limit")
    return out


async def _messages_for(client: Any, timeout: float) -> AsyncIterator[Any]:
    """The messages a subscribed client receives in the next `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    it = client.messages.__aiter__()
    while (left := deadline - loop.time()) > 0:
        try:
            yield await asyncio.wait_for(it.__anext__(), left)
        except TimeoutError:
            return


async def _submit_and_watch(bus: Any, job: dict[str, Any], timeout: float) -> Any:
    """Queue a job on the bus; its state once a runner started or refused it within
    `timeout` seconds, else None (it stays queued)."""
    import aiomqtt

    from runner.bus import BusUnavailable, Topics, open_client, submitter
    from runner.job_queue import JobState

    topics = Topics(bus.prefix)
    me = submitter(bus)
    # kept at the broker while no runner has answered, so `mlrb queue` lists what waits
    waiting = JobState(job=job["id"], status="queued", runner="", submitter=me, task=job["task"],
                       scale=job["scale"], agent=job["agent"], ts=time.time())
    try:
        async with open_client(bus) as client:
            # watch first: a runner may take the job the moment it is published
            await client.subscribe_checked(topics.job_states_of(job["id"]), qos=1)
            await client.publish_checked(topics.submitted(me, job["id"]),
                                         waiting.model_dump_json().encode(), retain=True)
            await client.publish_checked(topics.jobs_of(me), json.dumps(job).encode())
            async for message in _messages_for(client, timeout):
                try:
                    state = JobState.model_validate_json(bytes(message.payload))  # type: ignore[arg-type]
                except ValueError:
                    continue
                if state.status in ("started", "refused", "ended"):  # ended: it started, and is over
                    await client.publish_checked(topics.submitted(me, job["id"]), b"", retain=True)
                    return state
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot reach the MQTT broker at {bus.url}: {exc}") from None
    return None


@cli.command()
@click.argument("task")
@click.option("--agent", type=click.Choice(["scripted", "anthropic", "openai"]), default="scripted",
              show_default=True)
@click.option("--model", default=None, help="Provider model name (LLM agents).")
@click.option("--scale", type=click.Choice(["smoke", "full"]), default="smoke", show_default=True)
@click.option("--limit", "limits", multiple=True, help="time_s=N, steps=N, tokens=N or cost_usd=N")
@click.option("--approval", is_flag=True, help="Every tool call waits for an operator's approval.")
@click.option("--scaffold", type=click.Choice(["mlrb", "mlrb-paper"]), default="mlrb", show_default=True,
              help="The agent's loop: the project's own, or the paper's planner/worker (LLM agents).")
@click.option("--thinking-tokens", type=click.IntRange(min=1024), default=None,
              help="Anthropic extended thinking: this run's budget in tokens (1024 or more).")
@click.option("--reasoning-effort", type=click.Choice(["minimal", "low", "medium", "high"]), default=None,
              help="OpenAI reasoning models (o1, o3, o4, gpt-5): this run's effort.")
@click.option("--timeout", default=30.0, show_default=True,
              help="Seconds to wait for a runner to take the job; it stays queued after.")
def submit(task: str, agent: str, model: str | None, scale: str, limits: tuple[str, ...],
           approval: bool, scaffold: str, thinking_tokens: int | None, reasoning_effort: str | None,
           timeout: float) -> None:
    """Queue a run of TASK on the runners; prints its run id once a runner with room takes it."""
    from runner.bus import BusUnavailable, read_runner_states
    from tasks.api import TaskSpecError, load_task

    if agent == "scripted" and scaffold != "mlrb":
        raise click.ClickException(f"the {scaffold} scaffold is for LLM agents (--agent anthropic or openai)")
    if thinking_tokens is not None and agent != "anthropic":
        raise click.ClickException("--thinking-tokens is for --agent anthropic (extended thinking)")
    if reasoning_effort is not None and agent != "openai":
        raise click.ClickException("--reasoning-effort is for --agent openai (its reasoning models)")
    try:
        load_task(task).scale(scale)
    except TaskSpecError as exc:
        raise click.ClickException(str(exc)) from None
    cfg = _cfg()
    info = read_daemon_info(cfg)
    bus = _bus(info, cfg)
    if bus is None:
        raise click.ClickException("no runner daemon is running and no broker is configured "
                                   "(start one with `mlrb up`)")
    # the submitter recorded is the account the broker authenticates, not a payload field
    job = {"id": uuid.uuid4().hex, "task": task, "scale": scale, "agent": agent, "model": model,
           "limits": _parse_limits(limits) or None, "approval": approval, "scaffold": scaffold,
           **{k: v for k, v in (("thinking_tokens", thinking_tokens),
                                ("reasoning_effort", reasoning_effort)) if v is not None}}
    try:
        # a job waits in the sessions of runners that have connected before; where none ever
        # has, the broker would keep it nowhere, so say so rather than call it queued
        if not asyncio.run(read_runner_states(bus, timeout=1.0)):
            raise click.ClickException(f"no runner has ever connected to the broker at {bus.url}, so "
                                       "nothing would keep the job: start one with `mlrb up` first")
        state = asyncio.run(_submit_and_watch(bus, job, timeout))
    except BusUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if state is None:
        click.echo(f"job {job['id']} queued: no runner has taken it yet; it waits at the broker "
                   "until one has room (`mlrb queue` shows where it goes)")
    elif state.status == "refused":
        raise click.ClickException(f"job {job['id']} refused by runner {state.runner}: {state.reason}")
    else:
        click.echo(f"job {job['id']} taken by runner {state.runner}", err=True)
        click.echo(state.run)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job, in a list.")
@click.option("--limit", default=50, show_default=True, help="Jobs to show, newest first.")
def queue(as_json: bool, limit: int) -> None:
    """Jobs on the queue: which wait for room, and where each went (runner, run, or why refused)."""
    import aiomqtt

    from runner.bus import BusUnavailable
    from runner.job_queue import JobState, latest_by_job, read_job_states

    cfg = _cfg()
    info = read_daemon_info(cfg)
    bus = _bus(info, cfg, "viewer" if info is not None and info.broker == "mosquitto" else "operator")
    states: list[JobState] = []
    if bus is not None:
        try:
            states = asyncio.run(read_job_states(bus, timeout=1.0, submitted=True))
        except (aiomqtt.MqttError, BusUnavailable, OSError, TimeoutError) as exc:
            click.echo(f"the broker did not answer ({exc}); showing this host's journal only", err=True)
    # this host's journal holds its runner's jobs even where the broker forgot them
    for row in _journal_read(lambda r: r.jobs(limit=limit)) or []:
        states.append(JobState(job=row["id"], status=row["status"], runner=row["runner"] or "",
                               submitter=row["submitter"] or "", task=row["task"] or "",
                               scale=row["scale"] or "", agent=row["agent"] or "", run=row["run"],
                               reason=row["reason"] or "", ts=row["updated_ts"] or 0.0))
    jobs = sorted(latest_by_job(states).values(), key=lambda s: s.ts, reverse=True)[:limit]
    if bus is not None:
        _forget_answered(bus, states, jobs)
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json") for s in jobs], indent=2))
        return
    if not jobs:
        click.echo("no jobs seen yet (`mlrb submit TASK` queues one)")
        return
    click.echo(f"{'JOB':<34} {'SUBMITTER':<14} {'TASK':<20} {'STATE':<9} {'RUNNER':<16} {'RUN':<24} REASON")
    for s in jobs:
        shown = "waiting" if s.status in ("queued", "requeued") else s.status
        click.echo(f"{s.job[:34]:<34} {s.submitter[:14]:<14} {s.task[:20]:<20} {shown:<9} "
                   f"{s.runner[:16]:<16} {(s.run or '-')[:24]:<24} {s.reason[:80]}")


def _forget_answered(bus: Any, states: list[Any], latest: list[Any]) -> None:
    """Clear this account's "queued" records of jobs a runner has since answered (a submit
    that stopped watching leaves its record behind); another account's are not ours to clear."""
    from runner.bus import BusUnavailable, Topics, open_client, submitter

    me = submitter(bus)
    answered = {s.job for s in latest if s.status != "queued"}
    stale = {s.job for s in states if s.status == "queued" and s.submitter == me and s.job in answered}
    if not stale:
        return

    async def clear() -> None:
        topics = Topics(bus.prefix)
        async with open_client(bus) as client:
            for job in sorted(stale):
                await client.publish_checked(topics.submitted(me, job), b"", retain=True)

    with contextlib.suppress(BusUnavailable, OSError, TimeoutError, Exception):
        asyncio.run(clear())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, in a list.")
@click.option("--status", "status_filter", default=None, help="Only runs with this status.")
def runs(as_json: bool, status_filter: str | None) -> None:
    """List runs from the journal."""
    from mlrb_tui.state import fmt_duration
    from runner.journal import JournalReader

    cfg = _cfg()
    if not cfg.db_path.exists():
        rows: list[dict[str, Any]] = []
    else:
        reader = JournalReader(cfg.db_path)
        try:
            rows = reader.list_runs(status_filter)
        finally:
            reader.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no runs yet (try `mlrb demo`)")
        return
    click.echo(f"{'RUN':<26} {'TASK':<22} {'AGENT':<10} {'STATUS':<10} {'ELAPSED':>9} {'METRIC':<22} {'SCORE':>8}")
    for r in rows:
        metric = f"{r['metric_name']}={r['metric_value']:.4g}" if r["metric_name"] else "-"
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        click.echo(f"{r['run']:<26} {str(r['task']):<22} {str(r['agent']):<10} {r['status']:<10} "
                   f"{fmt_duration(r['active_s']):>9} {metric:<22} {score:>8}")


@cli.command()
@click.argument("run")
@click.option("--speed", default=10.0, show_default=True, help="Playback speed, 1 to 1000.")
def replay(run: str, speed: float) -> None:
    """Replay RUN from the journal in the console."""
    from runner.journal import JournalReader

    cfg = _cfg()
    if not cfg.db_path.exists():
        raise click.ClickException(f"no journal at {cfg.db_path}")
    reader = JournalReader(cfg.db_path)
    try:
        row = reader.find_run(run)
    finally:
        reader.close()
    if row is None:
        raise click.ClickException(f"no run {run!r} in {cfg.db_path} (see `mlrb runs`)")
    if not 1 <= speed <= 1000:
        raise click.BadParameter("speed must be between 1 and 1000", param_hint="--speed")
    _open_console(cfg, readonly=True, replay=row["run"], speed=speed)


EXIT_REFUSED = 1  # the runner answered no (and any command that fails to send)
EXIT_UNANSWERED = 3  # no answer in time; 2 is click's, for a usage error


def _waits(fn: Any) -> Any:
    """The options of a command that waits for the runner's control.ack."""
    fn = click.option("--no-wait", is_flag=True,
                      help="Send the command and return; the console shows the answer.")(fn)
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                        help="Seconds to wait for the runner's answer "
                             "(default: [console] ack_timeout_s, 10).")(fn)


async def _send_and_wait(bus: Any, cmd: Any, timeout: float) -> Any:
    """Publish a control command; the runner's control.ack of it (its data), or None when
    none came within `timeout` seconds of the publish."""
    import aiomqtt

    from runner.broker_access import topic_name
    from runner.bus import BusRefused, BusUnavailable, Topics, open_client
    from runner.event_data import ControlAckData
    from runner.events import EventError, decode_payload

    topics = Topics(bus.prefix)
    try:
        async with open_client(bus) as client:
            # listen first: a runner on the same host answers within milliseconds
            await client.subscribe_checked(topics.run_events(cmd.run), qos=1)
            await client.publish_checked(topics.control(cmd.run, bus.username or topic_name(cmd.operator)),
                                         cmd.to_json())
            async for message in _messages_for(client, timeout):
                try:
                    evs = decode_payload(bytes(message.payload))  # type: ignore[arg-type]
                except EventError:
                    continue
                for ev in evs:
                    if type(ev.body) is ControlAckData and ev.body.command_id == cmd.id:
                        return ev.body
    except BusRefused:
        raise
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot reach the MQTT broker at {bus.url}: "
                             f"{type(exc).__name__}: {exc}") from None
    return None


def _control(run: str, action: str, reason: str, args: dict[str, Any] | None = None, *,
             timeout: float | None = None, no_wait: bool = False, exit_on_answer: bool = True) -> bool:
    """Send a control command; unless `no_wait`, wait for the runner's answer and print it.

    Exits 1 when refused and 3 when unanswered (or, without `exit_on_answer`, says so on
    stderr and returns False); True when accepted (or sent, with `no_wait`)."""
    from pydantic import ValidationError

    from runner.bus import BusUnavailable, send_control
    from runner.control import ControlCommand, default_operator
    from runner.events import valid_run_id

    cfg = _cfg()
    bus = _bus(read_daemon_info(cfg), cfg)
    if bus is None:
        raise click.ClickException("no runner daemon is running (start one with `mlrb up`)")
    if not valid_run_id(run):
        raise click.ClickException(f"{run!r} is not a run id (see `mlrb runs`)")
    try:
        cmd = ControlCommand.model_validate({"run": run, "action": action, "reason": reason,
                                             "operator": default_operator(), "args": args or {}})
    except ValidationError as exc:
        raise click.ClickException(f"invalid {action} command: {exc.errors()[0]['msg']}") from None
    if cmd.invalid:
        raise click.ClickException(f"invalid {action} command: {cmd.invalid}")
    wait = cfg.ack_timeout_s if timeout is None else timeout
    try:
        if no_wait:
            asyncio.run(send_control(bus, cmd))
        else:
            ack = asyncio.run(_send_and_wait(bus, cmd, wait))
    except BusUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if no_wait:
        click.echo(f"sent {action} to {run} (command {cmd.id}); the console shows the runner's answer")
        return True
    if ack is not None and ack.accepted:
        click.echo(f"{action} {run}: accepted" + (f" ({ack.reason})" if ack.reason else ""))
        return True
    if ack is not None:
        click.echo(f"{action} {run}: refused: {ack.reason or 'no reason given'}", err=True)
        code = EXIT_REFUSED
    else:
        known = _journal_read(lambda r: r.find_run(run)) is not None
        hint = "" if known else f"; this host's journal has no run {run!r} (see `mlrb runs`)"
        click.echo(f"{action} {run}: no answer from its runner in {wait:g} s (command {cmd.id}; "
                   f"it may still apply if the runner is only slow){hint}", err=True)
        code = EXIT_UNANSWERED
    if exit_on_answer:
        sys.exit(code)
    return False


@cli.command()
@click.argument("run")
@click.option("--freeze", is_flag=True, help="Also freeze the sandbox (docker pause).")
@click.option("--reason", default="", help="Why (recorded).")
@_waits
def pause(run: str, freeze: bool, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Hold RUN at the agent's next step (the clock stops); --freeze pauses the sandbox too."""
    _control(run, "freeze" if freeze else "hold", reason, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.option("--reason", default="", help="Why (recorded).")
@_waits
def resume(run: str, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Resume a held or frozen RUN."""
    _control(run, "resume", reason, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.option("--reason", required=True, help="Why (recorded).")
@_waits
def kill(run: str, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Kill RUN."""
    _control(run, "kill", reason, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.argument("text")
@_waits
def message(run: str, text: str, timeout: float | None, no_wait: bool) -> None:
    """Send TEXT to RUN's agent at its next turn."""
    _control(run, "message", "operator message", {"text": text}, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.option("--reason", default="", help="Why (recorded).")
@_waits
def score(run: str, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Score RUN's current output now, off the clock."""
    _control(run, "score", reason, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.argument("name", type=click.Choice(LIMIT_NAMES))
@click.argument("value", type=float)
@click.option("--reason", required=True, help="Why (recorded).")
@_waits
def limit(run: str, name: str, value: float, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Change one of RUN's limits mid-run."""
    _control(run, "limit", reason, {"name": name, "value": value}, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--reason", default="", help="Why (recorded).")
@_waits
def approval(run: str, state: str, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Switch approval mode: every tool call of RUN waits for an operator."""
    _control(run, "approval_mode", reason, {"on": state == "on"}, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.argument("call_id")
@click.option("--args", "edited", default=None, help="Edited arguments, as a JSON object.")
@click.option("--reason", default="", help="Why (recorded).")
@_waits
def approve(run: str, call_id: str, edited: str | None, reason: str, timeout: float | None,
            no_wait: bool) -> None:
    """Approve a waiting tool call (optionally with edited arguments)."""
    args: dict[str, Any] = {"call_id": call_id}
    if edited is not None:
        try:
            parsed = json.loads(edited)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
        if not isinstance(parsed, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--args")
        args["args"] = parsed
    _control(run, "approve", reason, args, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.argument("call_id")
@click.option("--reason", required=True, help="Why: the agent sees it.")
@_waits
def reject(run: str, call_id: str, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Reject a waiting tool call; the agent sees the reason."""
    _control(run, "reject", reason, {"call_id": call_id}, timeout=timeout, no_wait=no_wait)


@cli.command()
@click.argument("run")
@click.option("--reason", default="", help="Why (recorded).")
@_waits
def shell(run: str, reason: str, timeout: float | None, no_wait: bool) -> None:
    """Open an interactive shell in RUN's sandbox as the sandbox user (recorded).

    The shell opens once the runner has recorded its start (--no-wait: at once)."""
    import subprocess

    from runner.journal import JournalReader
    from runner.shell import ShellError, shell_command

    cfg = _cfg()
    reader = JournalReader(cfg.db_path)
    try:
        row = reader.find_run(run)
        if row is None:
            raise click.ClickException(f"no run {run!r}")
        argv, cwd = shell_command(reader, row["run"], cfg.runs_dir)
    except ShellError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        reader.close()
    _control(row["run"], "shell", reason, {"state": "start"}, timeout=timeout, no_wait=no_wait)
    try:
        code = subprocess.call(argv, cwd=cwd)
    finally:
        # the shell's own exit status is this command's, whatever the runner says of its end
        _control(row["run"], "shell", reason, {"state": "end"}, timeout=timeout, no_wait=no_wait,
                 exit_on_answer=False)
    sys.exit(code)


@cli.command()
@click.option("--db", type=click.Path(dir_okay=False, path_type=str), required=True,
              help="The central SQLite journal to write.")
@click.option("--bus", "bus_url", default=None, help="Broker URL (default: the configured one).")
@click.option("--client-id", default=None, help="The recorder's MQTT client id: the broker keeps "
              "its session under it (default: mlrb-recorder). Two recorders need two ids.")
@click.option("--session-expiry", type=click.IntRange(min=0), default=None,
              help="Seconds the broker keeps queueing for a recorder that is away "
                   "(default: 86400; 0: no persistent session).")
@click.option("--clean-start", is_flag=True,
              help="Drop what the broker kept for this client id before recording.")
def record(db: str, bus_url: str | None, client_id: str | None, session_expiry: int | None,
           clean_start: bool) -> None:
    """Record every run's events from the bus into one SQLite file (a fleet's journal).

    The session is persistent, so the broker queues events while the recorder is away; a gap
    that still shows is asked for from the run's runner."""
    from runner.bus_options import configured_bus
    from runner.recorder import CLIENT_ID, SESSION_EXPIRY, Recorder

    cfg = _cfg()
    info = read_daemon_info(cfg)
    try:
        bus = configured_bus(cfg, bus_url) if bus_url else _bus(info, cfg, "viewer")
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if bus is None:
        raise click.ClickException("no broker: pass --bus mqtt://host:port or configure [bus] url")
    client_id = client_id or CLIENT_ID
    if not client_id.isprintable() or not 0 < len(client_id.encode()) <= 64:
        raise click.ClickException("--client-id must be 1 to 64 printable bytes")
    expiry = SESSION_EXPIRY if session_expiry is None else session_expiry
    rec = Recorder(bus, Path(db), client_id=client_id, session_expiry=expiry, clean_start=clean_start)
    session = f"session {client_id}, kept {expiry} s" if expiry else f"client {client_id}, no session kept"
    click.echo(f"recording {bus.url} into {db} ({session}{', clean start' if clean_start else ''}; "
               "ctrl+c stops)")
    try:
        asyncio.run(rec.run())
    except KeyboardInterrupt:
        pass
    sub = rec.subscriber
    rejects = ", ".join(f"{r} {n}" for r, n in rec.rejects.counts.most_common())
    click.echo(f"recorded {rec.received} events; rejected {rec.rejects.total}"
               + (f" ({rejects})" if rejects else "")
               + f"; {sub.reconnects} reconnects; {sub.repairs_requested} repairs asked")


def _fleet_dir(path: str | None) -> Path:
    return Path(path) if path else _cfg().home / "fleet-broker"


@cli.group()
def broker() -> None:
    """A fleet's Mosquitto: its configuration (TLS, passwords, ACL) and its accounts."""


@broker.command("config")
@click.option("--dir", "dir_", default=None, help="Where to write it (default: MLRB_HOME/fleet-broker).")
@click.option("--port", default=8883, show_default=True, help="The TLS listener's port.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="The TLS listener's address.")
@click.option("--cafile", default="ca.crt", show_default=True, help="CA certificate (relative to --dir).")
@click.option("--certfile", default="server.crt", show_default=True, help="The broker's certificate.")
@click.option("--keyfile", default="server.key", show_default=True, help="The broker's private key.")
@click.option("--client-certs", is_flag=True,
              help="Clients authenticate with certificates; the certificate's CN is the account.")
@click.option("--local-port", type=int, default=None, help="Also listen on loopback, without TLS.")
def broker_config(dir_: str | None, port: int, bind: str, cafile: str, certfile: str, keyfile: str,
                  client_certs: bool, local_port: int | None) -> None:
    """Write mosquitto.conf, passwd and acl for a fleet broker; print the configuration."""
    import getpass

    from runner.broker_access import FleetBroker

    fleet = FleetBroker(_fleet_dir(dir_), port=port, bind=bind, cafile=cafile, certfile=certfile,
                        keyfile=keyfile, client_certs=client_certs, local_port=local_port,
                        user=getpass.getuser())
    conf = fleet.write(_cfg().prefix)
    click.echo(conf.read_text(), nl=False)
    click.echo(f"\nwrote {conf}; start it with: mosquitto -c {conf}")


@broker.group("user")
def broker_user() -> None:
    """The fleet broker's accounts: people (operator, viewer) and runner hosts (runner)."""


def _store(dir_: str | None) -> Any:
    from runner.broker_access import AccountStore

    return AccountStore(_fleet_dir(dir_), (_cfg().prefix,))


@broker_user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "viewer", "runner"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (else one is generated).")
@click.option("--dir", "dir_", default=None, help="The broker's directory (default: MLRB_HOME/fleet-broker).")
def broker_user_add(name: str, role: str, password_stdin: bool, dir_: str | None) -> None:
    """Add (or replace) account NAME with a role; a runner's account is its runner id."""
    from runner.broker_access import AccessError

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    try:
        cred = _store(dir_).add(name, role, password)
    except AccessError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{role} {name} added; reload the broker (kill -HUP its pid) to apply")
    if not password_stdin:
        click.echo(f"password: {cred.password}")


@broker_user.command("remove")
@click.argument("name")
@click.option("--dir", "dir_", default=None, help="The broker's directory (default: MLRB_HOME/fleet-broker).")
def broker_user_remove(name: str, dir_: str | None) -> None:
    """Remove account NAME."""
    if not _store(dir_).remove(name):
        raise click.ClickException(f"no account {name!r}")
    click.echo(f"{name} removed; reload the broker (kill -HUP its pid) to apply")


@broker_user.command("list")
@click.option("--dir", "dir_", default=None, help="The broker's directory (default: MLRB_HOME/fleet-broker).")
def broker_user_list(dir_: str | None) -> None:
    """The accounts and their roles."""
    from runner.broker_access import AccessError

    try:
        accounts = _store(dir_).load()
    except AccessError as exc:
        raise click.ClickException(str(exc)) from None
    if not accounts:
        click.echo("no accounts yet (`mlrb broker user add NAME --role operator`)")
    for name, account in sorted(accounts.items()):
        click.echo(f"{name:<32} {account.role}")


@cli.group()
def image() -> None:
    """Build the sandbox and scorer images, and refresh their lock files."""


@image.command("base")
@click.option("--name", default=None, help="Base image name (default mlrb-base:bookworm).")
def image_base(name: str | None) -> None:
    """Build the base image offline with debootstrap (about a minute)."""
    from runner import image as img

    name = name or img.DEFAULT_BASE
    try:
        img.build_base(name)
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"built {name}")


@image.command("build")
@click.option("--gpu", is_flag=True,
              help="The GPU build: torch's CUDA wheels from PyPI (no CUDA base needed).")
@click.option("--scorer", is_flag=True,
              help="The scorer image (lm-eval, datasets, sacrebleu, rouge-score), FROM the sandbox image.")
@click.option("--base", default=None, help="Base image (default: MLRB_BASE_IMAGE, for --gpu "
              "MLRB_GPU_BASE_IMAGE, else mlrb-base:bookworm).")
@click.option("--tag", default=None, help="Image tag (default: mlrb-sandbox, mlrb-sandbox-gpu, "
              "mlrb-scorer or mlrb-scorer-gpu, :latest).")
@click.option("--force", is_flag=True, help="Rebuild even when an up-to-date image exists.")
def image_build(gpu: bool, scorer: bool, base: str | None, tag: str | None, force: bool) -> None:
    """Build the sandbox or scorer image from its Dockerfile and lock (reused when up to date)."""
    from runner import image as img

    base = base or img.default_base("gpu" if gpu else "cpu")
    started = time.monotonic()

    def log(line: str) -> None:
        if line.strip():
            click.echo(line.rstrip("\n"))

    try:
        if not img.base_exists(base):
            if base != img.DEFAULT_BASE:
                raise click.ClickException(f"the base image {base} is missing: pull or build it")
            click.echo(f"base image {base} is missing; building it with debootstrap")
            img.build_base(base)
        if scorer:
            result = img.build_scorer_image(tag=tag, base=base, force=force, log=log, gpu=gpu)
        else:
            result = img.build_image(tag=tag, base=base, force=force, log=log, gpu=gpu)
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    what = ("scorer" if scorer else "sandbox") + (" GPU" if gpu else "")
    click.echo(f"{what} image ready: {result} ({time.monotonic() - started:.0f} s)")


@image.command("lock")
@click.option("--cpu", "flavours", flag_value="cpu", help="Only the CPU build's locks.")
@click.option("--gpu", "flavours", flag_value="gpu", help="Only the GPU build's locks.")
def image_lock(flavours: str | None) -> None:
    """Re-resolve the images' lock files with pip (the sandbox's, then the scorer's)."""
    from runner import image as img

    kinds = [k for k in img.KINDS if flavours in (None, k.flavour)]
    kinds.sort(key=lambda k: (k.flavour, k.role != "sandbox"))  # a scorer's lock follows its sandbox's
    try:
        for kind in kinds:
            click.echo(f"== locking {kind.key} from {kind.input_path.name}")
            img.write_lock(kind, log=lambda s: click.echo(s) if s.strip() else None)
    except Exception as exc:
        raise click.ClickException(str(exc)) from None


@image.command("proxy")
@click.option("--base", default=None, help="Base image (default: MLRB_BASE_IMAGE or mlrb-base:bookworm).")
@click.option("--tag", default=None, help="Image tag (default: MLRB_PROXY_IMAGE or mlrb-proxy:latest).")
@click.option("--force", is_flag=True, help="Rebuild even when an up-to-date image exists.")
def image_proxy(base: str | None, tag: str | None, force: bool) -> None:
    """Build the egress proxy image of allowlist tasks: squid from the Debian mirror."""
    from runner import egress_proxy
    from runner import image as img

    base = base or img.default_base()
    try:
        if not img.base_exists(base):
            click.echo(f"base image {base} is missing; building it with debootstrap")
            img.build_base(base)
        result = egress_proxy.build_proxy_image(tag=tag, base=base, force=force,
                                                log=lambda s: click.echo(s) if s.strip() else None)
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"proxy image ready: {result}")


@cli.group()
def assets() -> None:
    """Models and datasets the tasks name, staged on this host (Hugging Face cache layout)."""


def _asset_store() -> Any:
    from runner.assets import AssetStore

    cfg = _cfg()
    return AssetStore(cfg.home, endpoint=cfg.hub_endpoint, token=cfg.hub_token,
                      log=lambda s: click.echo(s, err=True))


def _asset_items(names: tuple[str, ...], scale: str | None, everything: bool = True) -> list[Any]:
    from runner.assets import task_assets
    from tasks.api import TaskSpecError, list_tasks, load_task

    if not names and not everything:
        raise click.ClickException("name a task, or pass --all")
    try:
        specs = [load_task(n) for n in names] if names else list_tasks()
    except TaskSpecError as exc:
        raise click.ClickException(str(exc)) from None
    return task_assets(specs, scale)


def _assets_call(fn: Any, *args: Any) -> Any:
    from runner.assets import AssetError

    try:
        return fn(*args)
    except AssetError as exc:
        raise click.ClickException(str(exc)) from None


@assets.command("list")
@click.argument("task", required=False)
@click.option("--scale", type=click.Choice(["smoke", "full"]), default=None, help="Only this scale's assets.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per asset, in a list.")
def assets_list(task: str | None, scale: str | None, as_json: bool) -> None:
    """What each task needs, for whom, how big, whether it is staged, and where."""
    from runner.assets import human

    states = _assets_call(_asset_store().states, _asset_items((task,) if task else (), scale))
    if as_json:
        click.echo(json.dumps([s.to_json() for s in states], indent=1))
        return
    click.echo(f"{'TASK':<22} {'ASSET':<26} {'KIND':<8} {'FOR':<7} {'SIZE':>10} {'STATUS':<8} "
               f"{'REPOSITORY':<48} WHERE")
    for s in states:
        a = s.asset
        size = human(s.size_bytes) if s.size_exact else f"~{human(s.size_bytes)}"
        status = s.status if s.files_expected is None or s.status != "partial" \
            else f"partial ({s.files_present}/{s.files_expected})"
        rev = (s.commit or a.revision)[:12]
        click.echo(f"{s.task:<22} {a.name:<26} {a.kind:<8} {a.audience:<7} {size:>10} {status:<8} "
                   f"{a.repo + '@' + rev + (' (gated)' if a.gated else ''):<48} {s.path}")


@assets.command("fetch")
@click.argument("task", required=False)
@click.option("--all", "everything", is_flag=True, help="Every task's assets.")
@click.option("--scale", type=click.Choice(["smoke", "full"]), default="full", show_default=True)
def assets_fetch(task: str | None, everything: bool, scale: str) -> None:
    """Download what is missing with the Hugging Face client (resumable), after a disk check."""
    if task and everything:
        raise click.ClickException("name a task or pass --all, not both")
    items = _asset_items((task,) if task else (), scale, everything=everything)
    if not items:
        click.echo(f"nothing to fetch: no asset is declared for {task or 'any task'} at {scale} scale")
        return
    for s in _assets_call(_asset_store().fetch, items):
        click.echo(f"{s.task}/{s.asset.name}: {s.status} ({s.files_present} files) in {s.path}")


@assets.command("verify")
@click.argument("task", required=False)
def assets_verify(task: str | None) -> None:
    """Check every staged file's sha256 against the lock; exit 1 on a mismatch."""
    report = _assets_call(_asset_store().verify, _asset_items((task,) if task else (), None))
    for label in report.verified:
        click.echo(f"ok       {label}")
    for label in report.not_present:
        click.echo(f"missing  {label}")
    for p in report.problems:
        click.echo(f"MISMATCH {p.label}: {p.path}: {p.message}", err=True)
    click.echo(f"{report.checked_files} files checked, {len(report.problems)} mismatched")
    if report.problems:
        sys.exit(1)


@assets.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("tasks_", metavar="[TASK]...", nargs=-1)
def assets_export(file: Path, tasks_: tuple[str, ...]) -> None:
    """Write the staged assets (verified first) and their lock to a tar, for an air-gapped host."""
    labels = _assets_call(_asset_store().export, file, _asset_items(tasks_, None))
    click.echo(f"exported {len(labels)} assets to {file}: {', '.join(labels)}")


@assets.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def assets_import(file: Path) -> None:
    """Install an export's assets; every file is checked against its lock first."""
    installed = _assets_call(_asset_store().import_, file)
    click.echo(f"imported {len(installed)} repositories: {', '.join(installed)}")


@cli.command()
@click.option("--scale", type=click.Choice(["smoke", "full"]), default="full", show_default=True,
              help="The scale to check the host for.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(scale: str, as_json: bool) -> None:
    """Check this host for a scale, a line per check (ok / warn / fail, with a fix); exit 1 on a fail."""
    from runner.doctor import diagnose

    report = diagnose(scale)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        for check in report.checks:
            click.echo(check.line())
        click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@cli.group(invoke_without_command=True)
@click.pass_context
def tasks(ctx: click.Context) -> None:
    """List the seven MLRB tasks."""
    if ctx.invoked_subcommand is not None:
        return
    from tasks.api import TaskSpecError, list_tasks

    try:
        specs = list_tasks()
    except TaskSpecError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'TASK':<22} {'METRIC':<28} {'FULL':<22} {'SMOKE':<12} SOURCE")
    for t in specs:
        full, smoke = t.scale("full"), t.scale("smoke")
        click.echo(f"{t.name:<22} {t.metric:<28} {f'{full.time_s / 3600:g} h, {full.gpus} GPU':<22} "
                   f"{f'{smoke.time_s / 60:g} min':<12} {t.source}")


@tasks.command("show")
@click.argument("name")
@click.option("--scale", type=click.Choice(["smoke", "full"]), default="full", show_default=True)
def tasks_show(name: str, scale: str) -> None:
    """Print a task's spec and the prompt its agent receives."""
    from tasks.api import TaskSpecError, load_task

    try:
        t = load_task(name)
        prompt = t.prompt(scale)
    except TaskSpecError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo((t.dir / "task.toml").read_text())
    if t.upstream is not None:
        up = t.upstream
        click.echo(f"----- upstream -----\n{up.task} in github.com/{up.repo}, {up.path}")
        for name, where in up.fields.items():
            click.echo(f"  {name:<12} {where}")
        for why in up.departures:
            click.echo(f"  departs: {why}")
    for line in _compute_lines(t):
        click.echo(line)
    click.echo(f"----- prompt ({scale}) -----\n{prompt}")
    click.echo("----- results -----")
    if t.reference.summary:
        click.echo(f"paper: {t.reference.summary}")
    for agent, res in t.reference.results.items():
        if isinstance(res, dict):
            click.echo(f"  {agent:<22} {t.metric} {res.get('value', '-')}  "
                       f"({res.get('succeeded', '?')} of {res.get('runs', '?')} runs succeeded)")
    for line in _our_results(t.name, t.metric):
        click.echo(line)


def _compute_lines(t: TaskSpec) -> list[str]:
    """A task's compute: what upstream's prompt states, beside what full scale gives here."""
    full = t.scale("full")
    here_gpu = f"{full.gpus} GPU" + (f" ({full.hardware})" if full.hardware else "")
    here_disk = f"{full.disk_gb:g} GB workspace quota" if full.disk_gb else "no workspace quota"
    up = t.upstream.compute if t.upstream is not None else None
    lines = ["----- compute -----"]
    if up is None:
        lines.append("  upstream     states no compute for this task")
    else:
        lines.append(f"  upstream     {up.stated}")

    def row(what: str, theirs: str, ours: str) -> None:
        lines.append(f"  {what:<12} upstream {theirs}; full scale here {ours}")

    if up is not None:
        row("GPU", f"{up.gpus}x {up.gpu}", here_gpu)
        row("RAM", f"{up.ram_gb:g} GB" if up.ram_gb else "states none", f"{full.memory_gb:g} GB")
        row("disk", f"{up.disk_gb:g} GB" if up.disk_gb else "states none", here_disk)
        row("time", up.time_limit, f"{full.time_s / 3600:g} h on the clock")
        if up.note:
            lines.append(f"  note         {up.note}")
    else:
        lines.append(f"  full scale   {here_gpu}, {full.memory_gb:g} GB RAM, {here_disk}")
    return lines


def _our_results(task: str, metric: str) -> list[str]:
    """This journal's final scores for a task, beside the paper's."""
    from runner.journal import JournalReader

    cfg = _cfg()
    if not cfg.db_path.exists():
        return ["ours: no runs yet"]
    reader = JournalReader(cfg.db_path)
    try:
        rows = [r for r in reader.list_runs() if r["task"] == task]
    finally:
        reader.close()
    if not rows:
        return ["ours: no runs yet"]
    out = ["ours:"]
    by_agent: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_agent.setdefault((str(r["agent"]), str(r["scale"])), []).append(r)
    for (agent, sc), group in sorted(by_agent.items()):
        scores = [r["score"] for r in group if r["status"] == "succeeded" and r["score"] is not None]
        mean = f"{sum(scores) / len(scores):.3f}" if scores else "-"
        cost = sum(r["cost_usd"] or 0 for r in group) / len(group)
        out.append(f"  {agent + ' (' + sc + ')':<22} {metric} {mean}  "
                   f"({len(scores)} of {len(group)} runs succeeded, ${cost:.2f} a run)")
    return out


def _journal_read(fn: Any, *args: Any) -> Any:
    """Call `fn(reader, *args)` on this host's journal; None when there is no journal yet."""
    from runner.journal import JournalReader

    cfg = _cfg()
    if not cfg.db_path.exists():
        return None
    reader = JournalReader(cfg.db_path)
    try:
        return fn(reader, *args)
    finally:
        reader.close()


def _campaign_request(payload: dict[str, Any], timeout: float) -> str:
    """Send a campaign request to the daemon; wait for its answer in the journal's row."""
    from runner.bus import BusUnavailable, submit_job

    cfg = _cfg()
    info = read_daemon_info(cfg)
    bus = _bus(info, cfg)
    if bus is None:
        raise click.ClickException("no runner daemon is running and no broker is configured "
                                   "(start one with `mlrb up`)")
    if info is not None:  # for this host's runner, whose journal the answer is read from
        payload = {**payload, "runner": info.runner_id}
    try:
        asyncio.run(submit_job(bus, payload))
    except BusUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _journal_read(lambda r: r.get_campaign(payload["name"]))
        if row is not None and row.get("request") == payload["id"]:
            return str(row.get("answer") or "")
        time.sleep(0.1)
    raise click.ClickException(f"no runner answered in {timeout:g} s (is `mlrb up` running on "
                               "this host?)")


@cli.group()
def campaign() -> None:
    """Run tasks × agents × repeats as one campaign, driven by the daemon, resumable by name."""


@campaign.command("run")
@click.argument("name")
@click.option("--file", "file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="A CAMPAIGN.toml with the same fields (flags given win).")
@click.option("--tasks", "tasks_", default=None, help="all, or task names: a,b")
@click.option("--agents", default=None, help="scripted, anthropic:MODEL, openai:MODEL (comma-separated)")
@click.option("--repeats", type=int, default=None, help="Runs per task and agent (default 1).")
@click.option("--scale", type=click.Choice(["smoke", "full"]), default=None, help="Default smoke.")
@click.option("--max-concurrent", type=int, default=None, help="Live runs at most (default 1).")
@click.option("--retries", type=int, default=None, help="Retries of a failed or killed slot (default 1).")
@click.option("--limit", "limits", multiple=True, help="time_s=N, steps=N, tokens=N or cost_usd=N")
@click.option("--scaffold", default=None,
              help="The agent scaffold: mlrb (default, the project's own) or mlrb-paper (the paper's).")
@click.option("--thinking-tokens", type=int, default=None,
              help="Anthropic extended thinking for its agents' runs: the budget in tokens.")
@click.option("--reasoning-effort", default=None,
              help="OpenAI reasoning models' effort for their runs: minimal, low, medium or high.")
@click.option("--update", is_flag=True, help="Change an existing campaign's spec.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the daemon.")
def campaign_run(name: str, file: Path | None, tasks_: str | None, agents: str | None,
                 repeats: int | None, scale: str | None, max_concurrent: int | None,
                 retries: int | None, limits: tuple[str, ...], scaffold: str | None,
                 thinking_tokens: int | None, reasoning_effort: str | None, update: bool,
                 timeout: float) -> None:
    """Queue campaign NAME (one run per task × agent × repeat) and return; again to resume it."""
    from runner.campaign import (
        CampaignError,
        CampaignSpec,
        build_spec,
        check_name,
        load_file,
        request,
        spec_changed,
    )

    row = _journal_read(lambda r: r.get_campaign(name))
    try:
        check_name(name)
        # resuming: what is not given again is the campaign's as stored
        fields = CampaignSpec.model_validate_json(row["spec"]).model_dump(mode="json") if row else {}
        fields.update(load_file(file) if file is not None else {})
        flags = {"tasks": tasks_, "agents": agents, "repeats": repeats, "scale": scale,
                 "max_concurrent": max_concurrent, "retries": retries, "scaffold": scaffold,
                 "thinking_tokens": thinking_tokens, "reasoning_effort": reasoning_effort,
                 "limits": _parse_limits(limits) if limits else None}
        fields.update({k: v for k, v in flags.items() if v is not None})
        spec = build_spec(fields, where=str(file) if file is not None else f"campaign {name}")
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from None
    if row is not None and not update:
        changed = spec.changes_from(CampaignSpec.model_validate_json(row["spec"]))
        if changed:
            raise click.ClickException(spec_changed(name, changed))
    answer = _campaign_request(request("run", name, spec=spec.model_dump(mode="json"), update=update),
                               timeout)
    if answer != "accepted":
        raise click.ClickException(f"campaign {name}: {answer.removeprefix('refused: ')}")
    slots = len(spec.slots())
    click.echo(f"campaign {name}: {slots} slots ({len(spec.tasks)} tasks × {len(spec.agents)} agents × "
               f"{spec.repeats} repeats) at {spec.scale} scale, {spec.max_concurrent} at a time; "
               f"`mlrb campaign status {name}` follows it")


def _campaign_status(name: str) -> dict[str, Any]:
    from runner.campaign import campaign_status

    found = _journal_read(lambda r: (r.get_campaign(name), r.campaign_runs(name), r.campaign_jobs(name)))
    if found is None or found[0] is None:
        raise click.ClickException(f"no campaign {name!r} (see `mlrb campaign list`)")
    return campaign_status(*found)


@campaign.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the campaign, its tasks and slots.")
def campaign_status_cmd(name: str, as_json: bool) -> None:
    """Per task of campaign NAME: slots done, running, queued and failed, and the cost spent."""
    st = _campaign_status(name)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    spec = st["spec"]
    why = f" ({st['reason']})" if st.get("reason") else ""
    click.echo(f"campaign {name}: {st['state']}{why}; {spec['scale']} scale, {spec['max_concurrent']} at "
               f"a time, {spec['retries']} retries, scaffold {spec['scaffold']}"
               + (f", thinking {spec['thinking_tokens']} tokens" if spec.get("thinking_tokens") else "")
               + (f", reasoning effort {spec['reasoning_effort']}" if spec.get("reasoning_effort") else ""))
    click.echo(f"{'TASK':<22} {'SLOTS':>5} {'DONE':>5} {'RUNNING':>7} {'QUEUED':>6} {'FAILED':>6} "
               f"{'RUNS':>5} {'COST':>9}")
    for t in [*st["tasks"], {"task": "total", **st["total"]}]:
        click.echo(f"{t['task']:<22} {t['slots']:>5} {t['done']:>5} {t['running']:>7} {t['queued']:>6} "
                   f"{t['failed']:>6} {t['runs']:>5} {'$' + format(t['cost_usd'], '.2f'):>9}")


@campaign.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per campaign, in a list.")
def campaign_list(as_json: bool) -> None:
    """Every campaign in the journal, with its progress."""
    from runner.campaign import campaign_status

    found = _journal_read(lambda r: [(c, r.campaign_runs(c["name"]), r.campaign_jobs(c["name"]))
                                     for c in r.campaigns()]) or []
    states = [campaign_status(c, runs, jobs) for c, runs, jobs in found]
    if as_json:
        click.echo(json.dumps([{k: s[k] for k in ("name", "state", "reason", "spec", "total")}
                               for s in states], indent=2))
        return
    if not states:
        click.echo("no campaigns yet (start one with `mlrb campaign run NAME --tasks ...`)")
        return
    click.echo(f"{'CAMPAIGN':<24} {'STATE':<10} {'SLOTS':>5} {'DONE':>5} {'RUNNING':>7} {'QUEUED':>6} "
               f"{'FAILED':>6} {'COST':>9}")
    for s in states:
        t = s["total"]
        click.echo(f"{s['name']:<24} {s['state']:<10} {t['slots']:>5} {t['done']:>5} {t['running']:>7} "
                   f"{t['queued']:>6} {t['failed']:>6} {'$' + format(t['cost_usd'], '.2f'):>9}")


@campaign.command("cancel")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded; its live runs are killed with it).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the daemon.")
def campaign_cancel(name: str, reason: str, timeout: float) -> None:
    """Cancel campaign NAME: no new runs, and its live runs are killed with the reason."""
    from runner.campaign import request
    from runner.control import default_operator

    if _journal_read(lambda r: r.get_campaign(name)) is None:
        raise click.ClickException(f"no campaign {name!r} (see `mlrb campaign list`)")
    answer = _campaign_request(request("cancel", name, reason=reason, operator=default_operator()),
                               timeout)
    if answer != "accepted":
        raise click.ClickException(f"campaign {name}: {answer.removeprefix('refused: ')}")
    click.echo(f"campaign {name} cancelled: {reason}")
    _kill_fleet_runs(name, reason)


def _kill_fleet_runs(name: str, reason: str) -> None:
    """Kill the campaign's runs that other runners started: the daemon that drives it kills
    its own, and only an operator may send controls to another runner's runs."""
    import aiomqtt

    from runner.bus import BusRefused, BusUnavailable
    from runner.control import ControlCommand, default_operator
    from runner.job_queue import read_job_states

    cfg = _cfg()
    info = read_daemon_info(cfg)
    bus = _bus(info, cfg)
    if bus is None or (info is not None and info.broker != "external"):
        return  # no fleet: every run of the campaign is the daemon's
    try:
        states = asyncio.run(read_job_states(bus, timeout=1.0))
    except (aiomqtt.MqttError, BusUnavailable, OSError, TimeoutError) as exc:
        click.echo(f"the broker did not answer ({exc}): runs of {name} on other runners go on", err=True)
        return
    here = info.runner_id if info is not None else None
    # a run is live until the runner that started it says it ended: the driver may have
    # withdrawn the job (ended, in its own state) just as another runner started it
    ended = {(s.job, s.runner) for s in states if s.status == "ended"}
    live = sorted({(s.run, s.runner) for s in states
                   if s.campaign == name and s.status == "started" and s.run and s.runner != here
                   and (s.job, s.runner) not in ended})
    for run, runner in live:
        cmd = ControlCommand.model_validate({"run": run, "action": "kill", "operator": default_operator(),
                                             "reason": reason or f"campaign {name} cancelled"})
        try:
            ack = asyncio.run(_send_and_wait(bus, cmd, cfg.ack_timeout_s))
        except (BusRefused, BusUnavailable) as exc:
            click.echo(f"kill {run} (runner {runner}): {exc}", err=True)
            continue
        if ack is None:
            click.echo(f"kill {run} (runner {runner}): no answer in {cfg.ack_timeout_s:g} s; "
                       f"`mlrb kill {run} --reason ...` again once its runner is back", err=True)
        elif ack.accepted:
            click.echo(f"killed {run} on runner {runner}")
        # refused: it had ended already


@cli.command()
@click.option("--campaign", "campaign_name", default=None, help="Only this campaign's runs.")
@click.option("--task", default=None, help="Only this task's runs.")
@click.option("--json", "fmt", flag_value="json", help="A list of objects, one per task × agent.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header line.")
@click.option("--markdown", "fmt", flag_value="markdown", help="A Markdown table.")
def results(campaign_name: str | None, task: str | None, fmt: str | None) -> None:
    """One row per task × agent: runs, successes, mean/std/best score, cost, and the paper's figure."""
    from runner import results as res

    rows = _journal_read(lambda r: r.list_runs()) or []
    table = res.results(rows, campaign=campaign_name, task=task)
    if fmt == "json":
        click.echo(res.to_json(table))
    elif fmt == "csv":
        click.echo(res.to_csv(table), nl=False)
    elif fmt == "markdown":
        click.echo(res.to_markdown(table), nl=False)
    elif not table:
        click.echo("no ended runs match (try `mlrb campaign run` or `mlrb demo`)")
    else:
        click.echo(res.to_text(table), nl=False)


def _demo_tasks(count: int, task: str | None) -> list[str]:
    from tasks.api import task_names

    names = task_names()
    if task:
        return [task] * count
    chosen = [t for t in DEMO_TASKS if t in names] or names
    if not chosen:
        raise click.ClickException("no tasks are installed")
    return [chosen[i % len(chosen)] for i in range(count)]


async def _demo_headless(cfg: Config, names: list[str], use_bus: bool) -> list[dict[str, Any]]:
    from runner.engine import Engine, Job

    engine = Engine(cfg, use_bus=use_bus)
    await engine.start()
    if engine.docker_note:
        click.echo(f"warning: {engine.docker_note}", err=True)
    if use_bus:
        click.echo(f"broker: {engine.bus_url} ({engine.broker_kind})")
    try:
        ids = [await engine.submit(Job(task=n, agent="scripted")) for n in names]
        click.echo("runs: " + ", ".join(ids))
        await engine.wait(ids)
        return [engine.supervisors[r].summary() for r in ids]
    finally:
        await engine.stop()


@cli.command()
@click.option("--headless", is_flag=True, help="No console: wait for the runs and print a summary.")
@click.option("--runs", "count", default=2, show_default=True, help="How many runs.")
@click.option("--task", default=None, help="Run this task only (default: a mix of training tasks).")
@click.option("--no-bus", is_flag=True, help="Headless only: skip the broker (journal only).")
def demo(headless: bool, count: int, task: str | None, no_bus: bool) -> None:
    """Start the engine and scripted baseline runs on smoke-scale tasks, and watch them."""
    cfg = _cfg()
    if not (headless and no_bus):
        _need_broker(cfg)
    names = _demo_tasks(count, task)
    if headless:
        started = time.monotonic()
        summaries = asyncio.run(_demo_headless(cfg, names, use_bus=not no_bus))
        from runner.journal import JournalReader

        reader = JournalReader(cfg.db_path)
        try:
            rows = {r["run"]: r for r in reader.list_runs()}
        finally:
            reader.close()
        click.echo(f"\n{'RUN':<26} {'STATUS':<10} {'ELAPSED':>8} {'STEPS':>5} {'LAST METRIC':<24} {'SCORE':<28} REASON")
        for s in summaries:
            r = rows.get(s["run"], {})
            metric = f"{r.get('metric_name')}={r.get('metric_value'):.4g}" if r.get("metric_name") else "-"
            score = f"{r.get('score_metric')}={r.get('score'):.4f}" if r.get("score") is not None else "-"
            click.echo(f"{s['run']:<26} {s['status']:<10} {s['elapsed_s']:>7.1f}s {s['steps']:>5} "
                       f"{metric:<24} {score:<28} {s['reason']}")
        click.echo(f"\n{len(summaries)} runs in {time.monotonic() - started:.0f} s; journal {cfg.db_path}")
        if any(s["status"] != "succeeded" for s in summaries):
            sys.exit(1)
        return
    from runner.daemon import DaemonError, start_detached, stop_daemon

    before = read_daemon_info(cfg)  # a daemon the operator started stays; the demo's own goes
    try:
        info = start_detached(cfg)
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        bus = _bus(info, cfg)
        for name in names:
            job = {"id": uuid.uuid4().hex, "task": name, "scale": "smoke", "agent": "scripted"}
            asyncio.run(_submit_and_watch(bus, job, 60))
        _open_console(cfg)
    finally:
        if before is None:
            click.echo(f"Stopping the runner daemon the demo started (pid {info.pid}); "
                       "its runs end as killed...")
            stopped = stop_daemon(cfg)
            click.echo("runner daemon stopped" if stopped else "the runner daemon had already stopped")
        else:
            click.echo(f"The runner daemon (pid {before.pid}) was running before the demo and "
                       "still runs, with its runs: `mlrb down` stops it.")


def _type_of(prop: dict[str, Any]) -> str:
    """A JSON Schema property's type in a few characters: `number | null`, `{string: number}`."""
    if "anyOf" in prop:
        return " | ".join(_type_of(p) for p in prop["anyOf"])
    if "enum" in prop:
        return "|".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    kind = prop.get("type", "any")
    if kind == "object":
        values = prop.get("additionalProperties", True)
        return f"{{string: {_type_of(values)}}}" if isinstance(values, dict) else "object"
    if kind == "array":
        return f"[{_type_of(prop.get('items', {}))}]"
    return str(kind)


def _echo_schemas(title: str, schemas: dict[str, dict[str, Any]]) -> None:
    click.echo(title)
    for name, schema in schemas.items():
        props: dict[str, Any] = schema.get("properties", {})
        click.echo(f"\n  {name}" + ("" if props else "  (no fields)"))
        required = set(schema.get("required", ()))
        width = max((len(f) for f in props), default=0)
        for field, prop in props.items():
            when = "required" if field in required else f"= {json.dumps(prop.get('default'))}"
            click.echo(f"    {field:<{width}}  {_type_of(prop)}  {when}")


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help='One JSON document: {"version", "events": {kind: schema}, "controls": {action: schema}}.')
def schema(as_json: bool) -> None:
    """The JSON Schema of every event kind's data and every control action's args."""
    from runner.control import control_schemas
    from runner.event_data import SCHEMA_VERSION, event_schemas

    events, controls = event_schemas(), control_schemas()
    if as_json:
        click.echo(json.dumps({"version": SCHEMA_VERSION, "events": events, "controls": controls},
                              indent=2))
        return
    _echo_schemas(f"Events (contract version {SCHEMA_VERSION}): the fields of each kind's data", events)
    click.echo()
    _echo_schemas("Controls: the args of each action", controls)


register_follow(cli)


def main() -> None:
    cli(prog_name="mlrb")


if __name__ == "__main__":
    main()
