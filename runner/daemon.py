"""The runner daemon: the engine in a detached process (`mlrb up` / `mlrb down`).

Runs survive the console closing and the SSH session ending: the daemon has its own
session, ignores SIGHUP, and ends only on SIGTERM/SIGINT, which ends its live runs with a
reason, or on SIGUSR1, which leaves them going for the next daemon to adopt (an upgrade).
A daemon that starts adopts the live runs of its home's journal (runner.adoption). While it runs, `$MLRB_HOME/daemon.json` says where its broker and journal are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.config import (
    Config,
    DaemonInfo,
    load_config,
    pid_alive,
    private_home,
    read_daemon_info,
    write_daemon_info,
)
from runner.engine import Engine

KEEP_RUNS_SIGNAL = signal.SIGUSR1  # stop, leaving the live runs going (`mlrb down --keep-runs`)


class DaemonError(RuntimeError):
    pass


async def serve(cfg: Config) -> None:
    stop = asyncio.Event()
    keep = False
    loop = asyncio.get_running_loop()

    def keep_runs() -> None:
        nonlocal keep
        keep = True
        stop.set()

    # before the engine starts: a stop asked for while it adopts runs waits for it, and never
    # kills the process outright (the default action of these signals)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(KEEP_RUNS_SIGNAL, keep_runs)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    engine = Engine(cfg)
    await engine.start()
    write_daemon_info(cfg, DaemonInfo(pid=os.getpid(), bus_url=engine.bus_url or "", prefix=cfg.prefix,
                                      runner_id=engine.runner_id, db=str(cfg.db_path),
                                      broker=engine.broker_kind, started=time.time(),
                                      adopted=engine.adoption["adopted"],
                                      orphans=engine.adoption["orphans"]))
    logging.info("runner %s up: broker %s (%s), journal %s, sandbox %s; adopted %d run(s)",
                 engine.runner_id, engine.bus_url, engine.broker_kind, cfg.db_path, engine._backend,
                 len(engine.adoption["adopted"]))
    try:
        await stop.wait()
    finally:
        logging.info("stopping%s", " (its runs go on, for the next runner to adopt)" if keep else "")
        if keep:
            await engine.stop("the runner daemon stopped and left the run going", keep_runs=True)
        else:
            await engine.stop("the runner daemon was stopped")
        with contextlib.suppress(FileNotFoundError):
            cfg.daemon_file.unlink()


def start_detached(cfg: Config, timeout: float = 60.0) -> DaemonInfo:
    """Start the daemon in its own session and wait until it is ready."""
    running = read_daemon_info(cfg)
    if running is not None:
        return running
    private_home(cfg)
    with contextlib.suppress(FileNotFoundError):
        cfg.daemon_file.unlink()
    # the log names runs and operators: private like the journal
    logf = os.fdopen(os.open(cfg.log_path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600), "ab")
    os.chmod(cfg.log_path, 0o600)
    env = {**os.environ, "MLRB_HOME": str(cfg.home)}
    proc = subprocess.Popen([sys.executable, "-m", "runner.daemon", "--home", str(cfg.home)],
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env, close_fds=True)
    logf.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_daemon_info(cfg)
        if info is not None and info.pid == proc.pid:
            return info
        if proc.poll() is not None:
            tail = cfg.log_path.read_text(errors="replace")[-2000:] if cfg.log_path.exists() else ""
            raise DaemonError(f"the runner daemon exited at start (code {proc.returncode}):\n{tail}")
        time.sleep(0.1)
    proc.terminate()
    raise DaemonError(f"the runner daemon did not become ready in {timeout:g} s; see {cfg.log_path}")


def stop_daemon(cfg: Config, timeout: float = 90.0, keep_runs: bool = False) -> bool:
    """Stop the running daemon; False when none was running. With `keep_runs` its runs go on
    in their sandboxes, and the next daemon of this home adopts them."""
    info = read_daemon_info(cfg)
    if info is None:
        return False
    os.kill(info.pid, KEEP_RUNS_SIGNAL if keep_runs else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(info.pid):
            return True
        time.sleep(0.1)
    os.kill(info.pid, signal.SIGKILL)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m runner.daemon")
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.home)
    asyncio.run(serve(cfg))


if __name__ == "__main__":
    main()
