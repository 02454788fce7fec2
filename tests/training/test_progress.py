"""The [progress] line protocol and the live console line of long steps."""
from __future__ import annotations

import io
import sys

import pytest

from pfpn.training import progress
from pfpn.training.progress import LiveLine, format_duration, parse_progress_line, progress_line


def test_line_round_trip():
    line = progress_line(125, 750, loss=1.23456, lr="0.02")
    assert line == "[progress] 125/750 loss=1.2346 lr=0.02"
    assert parse_progress_line(line + "\n") == (125, 750, {"loss": "1.2346", "lr": "0.02"})
    assert parse_progress_line("[progress] 3/9") == (3, 9, {})
    for other in ("training tiny: 16 images", "[progress] x/9", '{"iter": 25, "loss": 1.0}', ""):
        assert parse_progress_line(other) is None


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (5.4, "5s"), (62, "1m02s"), (3599, "59m59s"), (3700, "1h01m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_live_line_elapsed_and_remaining(monkeypatch):
    clock = iter([100.0, 110.0, 130.0, 200.0])  # start, then one reading per update
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()  # not a terminal: whole lines, at most one per every_s
    line = LiveLine("train", stream=out, every_s=15.0)
    # resumed at 100: the first update (101) counts one iteration in 10 s -> 649 left = 6490 s
    assert line.update(101, 750, {"loss": "2.0"}) == "[train] 101/750 loss=2.0  elapsed 10s  remaining 1h48m"
    assert line.update(103, 750, {}).endswith("elapsed 30s  remaining 1h47m")  # 3 it in 30 s, 647 left: 6470 s
    line.update(750, 750, {})  # the last one is always printed
    line.close()
    printed = out.getvalue().splitlines()
    assert printed == ["[train] 101/750 loss=2.0  elapsed 10s  remaining 1h48m",
                       "[train] 103/750  elapsed 30s  remaining 1h47m",
                       "[train] 750/750  elapsed 1m40s  remaining 0s"]


def test_main_job_run_logs_everything_and_shows_progress(tmp_path, capsys):
    from pfpn.benchmarks.main_job import run

    code = ("import time\nprint('hello')\nfor i in range(1, 4):\n    print(f'[progress] {i}/3 loss={1 / i:.4f}', "
            "flush=True)\nprint('bye')")
    log = tmp_path / "step.log"
    run([sys.executable, "-c", code], log, live="demo")
    text = log.read_text()
    assert "hello" in text and "[progress] 2/3 loss=0.5000" in text and "bye" in text
    console = capsys.readouterr().out
    assert "[demo] 3/3 loss=0.3333  elapsed" in console and "remaining 0s" in console
    assert "hello" not in console.splitlines()  # the command's own output goes to the log only
