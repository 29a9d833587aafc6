"""What the console costs a terminal: the real app in a real pseudo-terminal, bytes counted.

    python bench/console_pty.py [--runs 200 20] [--rate 10] [--seconds 20] [--size 200x50]
                                [--repaint-hz 8] [--link-kbps 0]

Each measurement starts the console (MLRBApp with Textual's own Linux driver) in a child
process whose stdin and stdout are the slave side of a pty of `--size`, with
TERM=xterm-256color. In the child a synthetic fleet (bench/console.py's Fleet: `--runs` runs
at `--rate` events/s each plus a 1 Hz GPU sample) feeds LiveSource. The parent reads the
master side and counts the bytes the console wrote in three phases:

- live: the fleet sends for `--seconds`;
- quiet: no events, the runs still running (their clocks move on);
- ended: every run has ended, so nothing on screen changes.

`--link-kbps N` reads the master side at N KB/s at most, a link that cannot keep up: the
figures then show the rate the console fell back to. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PHASES = ("live", "quiet", "ended")


# -- the child: the console under a synthetic fleet -------------------------------------------
def child(args: argparse.Namespace) -> None:
    from console import Fleet

    from mlrb_tui.app import MLRBApp
    from mlrb_tui.source import LiveSource
    from runner.control import ControlCommand
    from runner.events import Event

    marks = os.fdopen(args.marks_fd, "w", buffering=1)
    tmp = Path(tempfile.mkdtemp(prefix="mlrb-bench-pty-"))
    fleet = Fleet(args.runs, args.rate, args.seconds)
    app = MLRBApp(tmp / "live.db", None, operator="bench", repaint_hz=args.repaint_hz)

    def mark(text: str) -> None:
        marks.write(f"{time.monotonic():.6f} {getattr(app, 'ticks', 0)} {text}\n")

    async def feed() -> AsyncIterator[list[Event]]:
        # the rows are drawn before the live phase starts: the first paint is not counted
        created = fleet.created()
        yield created
        while app.dashboard is None or app.dashboard.table.row_count < args.runs:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        live = fleet.feed().__aiter__()
        await live.__anext__()  # run.created again: already sent
        mark("live")
        while True:  # the fleet's feed stays open after its burst, as a bus does
            nxt = asyncio.ensure_future(live.__anext__())
            over = asyncio.ensure_future(fleet.done.wait())
            done, _ = await asyncio.wait({nxt, over}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                break
            over.cancel()
            yield nxt.result()
        mark("quiet")
        await asyncio.sleep(args.seconds / 2)
        yield [f.make("run.ended", {"status": "succeeded", "elapsed_s": 60.0})
               for f in fleet.factories]
        await asyncio.sleep(1.5)  # the ended rows are drawn before the ended phase starts
        mark("ended")
        await asyncio.sleep(args.seconds / 2)
        mark("done")
        app.exit()
        await asyncio.Event().wait()

    async def no_send(cmd: ControlCommand) -> None:
        return None

    app.use_source(LiveSource(tmp / "live.db", None, feed=feed(), send=no_send))
    pacer = getattr(app, "pacer", None)
    if pacer is not None:  # say when the console changes its repaint rate by itself
        pacer.on_change = lambda hz: mark(f"rate {hz:g}")
    app.run()


# -- the parent: the terminal side ---------------------------------------------------------
@dataclass
class Figures:
    runs: int
    seconds: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    ticks: dict[str, int] = field(default_factory=dict)  # the console's repaint ticks
    rates: list[tuple[float, float]] = field(default_factory=list)  # (t since start, Hz)
    live_at: float = 0.0  # seconds after the start

    def per_s(self, phase: str) -> float:
        s = self.seconds.get(phase, 0.0)
        return self.bytes.get(phase, 0) / s if s else float("nan")

    def ticks_per_s(self, phase: str) -> float:
        s = self.seconds.get(phase, 0.0)
        return self.ticks.get(phase, 0) / s if s else float("nan")


def measure(args: argparse.Namespace, runs: int) -> Figures:
    cols, rows = (int(x) for x in args.size.split("x"))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    marks_r, marks_w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k not in ("COLORTERM", "TEXTUAL")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", "--runs", str(runs), "--rate", str(args.rate),
         "--seconds", str(args.seconds), "--repaint-hz", str(args.repaint_hz),
         "--marks-fd", str(marks_w)],
        stdin=slave, stdout=slave, stderr=slave,  # Textual draws on stderr
        env=env, pass_fds=(marks_w,),
        start_new_session=True)
    os.close(slave)
    os.close(marks_w)
    figures = Figures(runs)
    phase: str | None = None
    started, started_ticks = 0.0, 0
    spawned = time.monotonic()
    pending = b""
    budget = float("inf") if not args.link_kbps else 0.0
    last = time.monotonic()
    open_fds = {master, marks_r}
    dump = open(args.dump, "ab") if args.dump else None  # noqa: SIM115
    try:
        while open_fds:
            wait = [fd for fd in open_fds if fd != master or budget >= 1]
            ready, _, _ = select.select(wait, [], [], 0.01)
            now = time.monotonic()
            if args.link_kbps:  # the link refills at its rate; a short burst at most
                budget = min(budget + (now - last) * args.link_kbps * 1024, 4096.0)
            last = now
            if master in ready:
                try:
                    data = os.read(master, int(min(budget, 65536)))
                except OSError:  # the child closed its side
                    data = b""
                if not data:
                    open_fds.discard(master)
                else:
                    budget -= len(data)
                    if phase is not None:
                        figures.bytes[phase] = figures.bytes.get(phase, 0) + len(data)
                    if phase == "live" and dump is not None:
                        dump.write(data)
            if marks_r in ready:
                chunk = os.read(marks_r, 4096)
                if not chunk:
                    open_fds.discard(marks_r)
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    stamp, count, text = line.decode().split(" ", 2)
                    t, ticks = float(stamp), int(count)
                    if text.startswith("rate "):
                        figures.rates.append((t - spawned, float(text[5:])))
                        continue
                    if phase is not None:
                        figures.seconds[phase] = t - started
                        figures.ticks[phase] = ticks - started_ticks
                    phase, started, started_ticks = (text if text in PHASES else None), t, ticks
                    if text == "live":
                        figures.live_at = t - spawned
            if proc.poll() is not None and master not in ready and marks_r not in ready:
                break
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
        os.close(master)
        os.close(marks_r)
        if dump is not None:
            dump.close()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, nargs="+", default=[200, 20])
    p.add_argument("--rate", type=float, default=10.0, help="events/s per run")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--size", default="200x50", help="COLSxROWS of the pseudo-terminal")
    p.add_argument("--repaint-hz", type=float, default=8.0)
    p.add_argument("--link-kbps", type=float, default=0.0, help="read at most this many KB/s")
    p.add_argument("--dump", help="append what the console wrote in the live phase to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--marks-fd", type=int, default=-1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.runs = args.runs[0]
        child(args)
        return
    link = f", link {args.link_kbps:g} KB/s" if args.link_kbps else ""
    print(f"console in a {args.size} pty, TERM=xterm-256color, repaint {args.repaint_hz:g} Hz"
          f"{link}; {args.rate:g} ev/s per run + 1 Hz GPU")
    for runs in args.runs:
        f = measure(args, runs)
        print(f"  {runs:4d} runs: live {f.per_s('live') / 1024:7.1f} KB/s"
              f" ({f.ticks_per_s('live'):.1f} repaints/s)   "
              f"quiet (clocks move) {f.per_s('quiet') / 1024:6.2f} KB/s   "
              f"ended (nothing changes) {f.per_s('ended') / 1024:6.2f} KB/s"
              f" ({f.bytes.get('ended', 0)} bytes in {f.seconds.get('ended', 0):.0f} s)"
              + ("   (target live < 64 KB/s)" if runs == 200 else ""))
        if f.rates:
            steps = ", ".join(f"{hz:g} Hz at {t:.1f} s" for t, hz in f.rates)
            print(f"        repaint rate set by the console (s after its start; live from"
                  f" {f.live_at:.1f} s): {steps}")


if __name__ == "__main__":
    main()
