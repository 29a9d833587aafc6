"""The console in a browser: `textual serve` on loopback, one console process per tab.

The served command is the ordinary console (`python -m mlrb_tui.cli console`), so a browser
tab is exactly a terminal session; reaching it from elsewhere is an SSH tunnel's job, which
is why only loopback addresses are accepted.

The page fetches nothing from the internet: textual-serve's page links a web font from
Google Fonts, which an air-gapped lab network never answers, so the page is served from a
copy of its template that loads the font files textual-serve ships (or, without them, the
system's monospace fonts).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import sys
import tempfile
from pathlib import Path


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


FONT = "Roboto Mono"
MONOSPACE = "'Roboto Mono', 'DejaVu Sans Mono', 'Liberation Mono', Menlo, Consolas, monospace"
# a <link> to a stylesheet anywhere but this server (the template's Google Fonts one)
_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=\s*[\"']?https?://[^>]*>\s*", re.IGNORECASE)
# an inline SVG's namespace: an identifier, not a fetch, and HTML needs none
_SVG_XMLNS = re.compile(r'\s+xmlns="http://www\.w3\.org/2000/svg"')


def offline_page(template: str, fonts: list[str]) -> str:
    """textual-serve's page template with nothing fetched from elsewhere: its external
    stylesheets dropped, `fonts` (files under its static fonts/) declared in their place."""
    page = _SVG_XMLNS.sub("", _EXTERNAL_LINK.sub("", template))
    faces = "".join(
        f"@font-face {{ font-family: '{FONT}'; font-style: {'italic' if 'Italic' in name else 'normal'};"
        f" font-weight: 100 700; font-display: swap;"
        f" src: url('{{{{ config.static.url }}}}fonts/{name}') format('truetype'); }}\n"
        for name in fonts)
    style = f"<style>\n{faces}body, .intro, button {{ font-family: {MONOSPACE}; }}\n</style>\n"
    return page.replace("</head>", style + "</head>", 1)


def offline_templates(package: Path, into: Path) -> Path:
    """Write the offline page template beside `into` and return the folder to serve it from."""
    fonts = sorted(p.name for p in (package / "static" / "fonts").glob("*.ttf"))
    template = (package / "templates" / "app_index.html").read_text()
    into.mkdir(parents=True, exist_ok=True)
    (into / "app_index.html").write_text(offline_page(template, fonts))
    return into


def serve_console(host: str = "127.0.0.1", port: int = 8000, *, readonly: bool = False,
                  command: str | None = None) -> None:
    """Serve the console at http://host:port/ until interrupted (needs `textual-serve`)."""
    check_loopback(host)
    try:
        import textual_serve
        from textual_serve.server import Server
    except ImportError:
        raise ServeError("the browser console needs textual-serve: pip install textual-serve") from None
    package = Path(textual_serve.__file__).parent
    with tempfile.TemporaryDirectory(prefix="mlrb-serve-") as tmp:
        templates = offline_templates(package, Path(tmp))
        server = Server(command or console_command(readonly), host=host, port=port,
                        title="MLRB Console", templates_path=templates)
        server.serve()


__all__ = ["ServeError", "check_loopback", "console_command", "offline_page", "offline_templates",
           "serve_console"]
