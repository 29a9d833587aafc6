"""SVG snapshots of every screen (pytest-textual-snapshot), from the scenes that also make
screenshots/*.svg: the demo journal, a pinned clock, each scene's fixed terminal size (the
results chart also at 80×24 and at 200 columns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrb_tui.screenshots import SCENES, Scene, scene_app
from tests.fixtures.demo_journal import write_demo_journal


@pytest.mark.parametrize("scene", SCENES, ids=[s.name for s in SCENES])
def test_screen_snapshot(scene: Scene, snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = scene_app(write_demo_journal(tmp_path / "demo-journal.db"), scene)
    assert snap_compare(app, terminal_size=scene.size, run_before=scene.steps)
