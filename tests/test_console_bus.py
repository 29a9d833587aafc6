"""The console against a real Mosquitto: live events in, control commands out, acks back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mlrb_tui.app import MLRBApp
from mlrb_tui.screens.run_view import RunScreen
from mlrb_tui.widgets.run_header import RunHeader
from runner.bus import RepairRequest, Topics
from runner.control import ControlCommand, parse_control
from runner.events import EventFactory, encode_batch
from tests.conftest import Mosquitto, raw_client
from tests.fixtures.console_app import SIZE, started, until
from tests.fixtures.demo_journal import NOW, OPERATOR, RUNNING, write_demo_journal

pytestmark = pytest.mark.mosquitto


async def test_console_over_a_real_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    bus = mosquitto.config()
    topics = Topics(bus.prefix)
    app = MLRBApp(write_demo_journal(tmp_path / "journal.db"), bus, operator=OPERATOR,
                  clock=lambda: NOW)
    received: asyncio.Queue[ControlCommand] = asyncio.Queue()

    # the runner that created the demo's runs: a run takes events from its owner only
    async with raw_client(mosquitto.config("gpu-host-1")) as runner_side:
        await runner_side.subscribe(topics.all_controls, qos=1)

        async def listen() -> None:
            async for message in runner_side.messages:
                received.put_nowait(parse_control(bytes(message.payload)))  # type: ignore[arg-type]

        listener = asyncio.create_task(listen())
        try:
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await started(pilot)
                await until(pilot, lambda: app.source.bus_state == "online")
                assert "bus: online" in app.topbar_text().plain
                # a live event published by "the runner" reaches the table
                f = EventFactory(RUNNING, next_seq=app.fleet.last_seq(RUNNING) + 1)
                await runner_side.publish(topics.event("gpu-host-1", RUNNING), encode_batch(
                    [f.make("metric", {"step": 640, "values": {"loss": 1.25}}, ts=NOW)]), qos=1)
                await until(pilot, lambda: app.fleet.rows[RUNNING]["metric_value"] == 1.25)
                # `p` sends a hold over the bus
                await pilot.press("p")
                await until(pilot, lambda: not received.empty())
                cmd = received.get_nowait()
                assert (cmd.run, cmd.action, cmd.operator) == (RUNNING, "hold", OPERATOR)
                # the runner's ack comes back as an event and is shown
                await runner_side.publish(topics.event("gpu-host-1", RUNNING), encode_batch([f.make(
                    "control.ack", {"command_id": cmd.id, "action": "hold", "accepted": True,
                                    "reason": "held at the next step"}, ts=NOW)]), qos=1)
                await until(pilot, lambda: app.controls.acks_seen == 1)
                assert app.controls.ack_log[-1].startswith("hold r-mini-pile-01: accepted")
                # a malformed payload is counted, never fatal
                await runner_side.publish(topics.event("gpu-host-1", RUNNING), b"{not json", qos=1)
                await until(pilot, lambda: app.source.rejects.total == 1)
                assert app.is_running
                # another runner's event for this run is refused: it does not own the run
                async with raw_client(mosquitto.config("host-b")) as other:
                    forged = EventFactory(RUNNING, next_seq=f.next_seq)
                    await other.publish(topics.event("host-b", RUNNING), encode_batch(
                        [forged.make("metric", {"step": 641, "values": {"loss": 9.5}}, ts=NOW)]),
                        qos=1)
                await until(pilot, lambda: app.source.rejects.counts.get("not_owner") == 1)
                assert app.fleet.rows[RUNNING]["metric_value"] == 1.25
        finally:
            listener.cancel()


async def test_a_gap_on_the_bus_shows_the_run_catching_up_until_its_runner_fills_it(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    bus = mosquitto.config("operator")
    topics = Topics(bus.prefix)
    app = MLRBApp(write_demo_journal(tmp_path / "journal.db"), bus, operator=OPERATOR,
                  clock=lambda: NOW)
    asked: asyncio.Queue[RepairRequest] = asyncio.Queue()

    async with raw_client(mosquitto.config("gpu-host-1")) as runner_side:
        await runner_side.subscribe(topics.repair(RUNNING), qos=1)

        async def listen() -> None:
            async for message in runner_side.messages:
                asked.put_nowait(RepairRequest.model_validate_json(bytes(message.payload)))  # type: ignore[arg-type]

        listener = asyncio.create_task(listen())
        try:
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await started(pilot)
                await until(pilot, lambda: app.source.bus_state == "online")
                table = app.dashboard.table  # type: ignore[union-attr]
                assert "catching up" not in table.cell_text(RUNNING, "flags")
                last = app.fleet.last_seq(RUNNING)
                f = EventFactory(RUNNING, next_seq=last + 1)
                missed = [f.make("sandbox.output", {"stream": "stdout", "text": f"line {i}\n"}, ts=NOW)
                          for i in range(2)]
                after = f.make("metric", {"step": 700, "values": {"loss": 0.5}}, ts=NOW)
                # seq last+1 and last+2 never reach the console, nor its journal
                await runner_side.publish(topics.event("gpu-host-1", RUNNING), encode_batch([after]), qos=1)
                await until(pilot, lambda: "↻catching up" in table.cell_text(RUNNING, "flags"),
                            "the flags cell to say the run is catching up")
                request = await asyncio.wait_for(asked.get(), 10)
                assert (request.from_seq, request.to_seq) == (last + 1, last + 2)
                await until(pilot, lambda: "repairs asked 1" in app.topbar_text().plain,
                            "the status line to count the request")
                table.move_cursor(table.row_index(RUNNING))
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.state
                            is not None and "catching up" in str(app.screen.query_one(RunHeader).render()),
                            "the run view to say so")
                assert app.fleet.last_seq(RUNNING) == last  # what came past the gap waits for it
                await runner_side.publish(topics.event("gpu-host-1", RUNNING), encode_batch(missed), qos=1)
                await until(pilot, lambda: app.fleet.last_seq(RUNNING) == last + 3)
                await until(pilot, lambda: not app.fleet.catching_up, "the gap closed")
                assert app.fleet.rows[RUNNING]["metric_value"] == 0.5
                await until(pilot, lambda: "catching up" not in str(
                    app.screen.query_one(RunHeader).render()), "the run view to stop saying so")
                await pilot.press("escape")
                await until(pilot, lambda: "catching up" not in table.cell_text(RUNNING, "flags"))
        finally:
            listener.cancel()
