"""The main job end to end in its --quick form (a couple of minutes): every step runs for real on
a tiny dataset, the report has its sections, skipped backends say why, and a second run reuses
every finished step instead of redoing it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("data", "train", "evaluate", "export", "predict", "r50", "fps", "pq")


def _main_job(base: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "main_job.py"), "--quick", "--base", str(base),
                           *args], capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_main_job_and_rerun(tmp_path):
    first = _main_job(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in STEPS:
        assert re.search(rf"^\[{step}\] finished in \d+ s$", first.stdout, re.M), f"{step} did not run"

    report = (tmp_path / "work_dirs" / "report" / "REPORT.md").read_text()
    for section in ("## Targets", "## Training and evaluation", "## Export parity", "## Speed: R-50 at 800x1333",
                    "## PQ, box AP and mask AP per backend", "## Runtime predictions", "## Step times"):
        assert section in report, section
    overlays = list((tmp_path / "work_dirs" / "report" / "overlays").glob("*.png"))
    assert overlays and all((f"overlays/{p.name}" in report) for p in overlays)

    fps = json.loads((tmp_path / "work_dirs" / "bench" / "r50" / "fps.json").read_text())
    rows = {r["backend"]: r for r in fps["rows"]}
    assert {"pytorch", "ort_fp32", "ort_int8"} <= set(rows)
    assert all(rows[b]["status"] == "ok" for b in ("pytorch", "ort_fp32", "ort_int8"))
    for row in rows.values():  # nothing failed; what could not run says why
        assert row["status"] in ("ok", "skipped"), row
        assert row["status"] == "ok" or row["reason"]
    pq = json.loads((tmp_path / "work_dirs" / "bench" / "tiny" / "pq_parity.json").read_text())
    assert {r["backend"] for r in pq["rows"]} >= {"pytorch", "ort_fp32", "ort_int8"}

    second = _main_job(tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for step in STEPS:
        assert f"[{step}] done already" in second.stdout, step
    assert "finished in" not in second.stdout
