"""The console in a browser: `textual serve` on loopback, one console process per tab.

The served command is the ordinary console (`python -m mlrb_tui.cli console`), so a browser
tab is exactly a terminal session; reaching it from elsewhere is an SSH tunnel's job, which
is why only loopback addresses are accepted.
"""

from __future__ import annotations

import ipaddress
import shlex
import sys


class ServeError(RuntimeError):
    pass


def console_command(readonly: bool = False) -> str:
    argv = [sys.executable, "-m", "mlrb_tui.cli", "console"] + (["--readonly"] if readonly else [])
    return " ".join(shlex.quote(a) for a in argv)


def check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ServeError(f"{host} is not a loopback address: serve on 127.0.0.1 and tunnel "
                         "over SSH (ssh -L 8000:127.0.0.1:8000 host)")


def serve_console(host: str = "127.0.0.1", port: int = 8000, *, readonly: bool = False,
                  command: str | None = None) -> None:
    """Serve the console at http://host:port/ until interrupted (needs `textual-serve`)."""
    check_loopback(host)
    try:
        from textual_serve.server import Server
    except ImportError:
        raise ServeError("the browser console needs textual-serve: pip install textual-serve") from None
    server = Server(command or console_command(readonly), host=host, port=port,
                    title="MLRB Console")
    server.serve()


__all__ = ["ServeError", "check_loopback", "console_command", "serve_console"]
