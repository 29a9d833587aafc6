"""The browser console: `mlrb serve` answers on loopback with textual-serve's page."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from mlrb_tui.serve import ServeError, check_loopback, console_command
from tests.conftest import free_port, until_blocking


def test_only_loopback_is_served() -> None:
    check_loopback("127.0.0.1")
    check_loopback("::1")
    check_loopback("localhost")
    for host in ("0.0.0.0", "10.1.2.3", "example.org"):
        with pytest.raises(ServeError, match="not a loopback"):
            check_loopback(host)
    assert console_command(readonly=True).endswith("-m mlrb_tui.cli console --readonly")


def test_serve_answers_in_a_browser_on_loopback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("textual_serve")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlrb_tui.cli", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"MLRB_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                 "HOME": str(tmp_path)})
    def served() -> str | None:  # the page once the port answers, or why it never will
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return f"mlrb serve exited with {proc.returncode}" if proc.poll() is not None else None

    try:
        page = until_blocking(served, f"mlrb serve to answer on port {port}", timeout=30, interval=0.2)
        assert "MLRB Console" in page, proc.stdout.read().decode() if proc.poll() is not None else page[:500]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
