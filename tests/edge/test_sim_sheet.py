"""Contact sheet: writes a PNG a person can look at."""

from __future__ import annotations

import cv2

from edge.sources.sim.contact_sheet import main, write_sheet


def test_write_sheet_png(tmp_path):
    out = write_sheet("sim:parts?seed=1&drift=brightness:-0.4@40~10,newclass:crack@80", tmp_path / "s.png", per_event=1)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 240 and img.shape[1] >= 320


def test_cli(tmp_path, capsys):
    out = tmp_path / "d.png"
    assert main(["sim:digits?seed=1&classes=0-1&drift=newclass:2@30", "--out", str(out), "--per-event", "1", "--no-roi"]) == 0
    assert out.exists()
    assert main(["sim:digits?colour=1", "--out", str(out)]) == 2
    assert "'colour'" in capsys.readouterr().err
