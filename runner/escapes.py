"""Untrusted text from agents and sandboxes loses its terminal control sequences here."""

from __future__ import annotations

import re

# CSI, OSC (ended by BEL or ST), DCS/SOS/PM/APC strings, two-byte ESC sequences, and the
# 8-bit C1 forms; then every C0/C1 control except tab and newline.
_ESCAPES = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]            # CSI ... final byte
  | \x9b[0-?]*[ -/]*[@-~]              # 8-bit CSI
  | \x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?   # OSC ... BEL or ST
  | \x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?
  | \x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?       # DCS, SOS, PM, APC
  | [\x90\x98\x9e\x9f][^\x1b\x9c]*(?:\x1b\\|\x9c)?
  | \x1b[ -/]*[0-~]                    # other ESC sequences (charset, keypad, RIS...)
  | \x1b                               # a lone ESC
    """,
    re.VERBOSE,
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_BUT_CR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def overwrite_line(line: str) -> str:
    """What a line with carriage returns shows: the last text a carriage return left on it
    (a progress bar's latest redraw); a carriage return just before its end changes nothing."""
    if "\r" not in line:
        return line
    parts = [p for p in line.split("\r") if p]
    return parts[-1] if parts else ""


def strip_escapes(text: str, *, keep_cr: bool = False) -> str:
    """Remove escape sequences and control characters; keep tabs and newlines.

    A carriage return that redraws a progress bar keeps only what follows it on its line.
    With `keep_cr` carriage returns stay, for a stream read in pieces: where a piece ends,
    whether the line's last redraw is yet to come is not known.
    """
    text = _ESCAPES.sub("", text)
    if keep_cr:
        return _CONTROLS_BUT_CR.sub("", text)
    if "\r" in text:
        text = "\n".join(overwrite_line(line) for line in text.split("\n"))
    return _CONTROLS.sub("", text)
