"""The whole pipeline on its embedded defaults (what `make demo` runs after installing):

  1. synthetic dataset          data/synthetic (1000 train / 100 val, COCO panoptic layout)
  2. train the small config     torchrun, 2 CPU processes            -> work_dirs/tiny/final.pt
  3. evaluate (PyTorch)         PQ on val                             -> work_dirs/tiny/eval/pq.json
  4. export both flavors        with --verify (ONNX Runtime parity)   -> work_dirs/tiny/deploy/*.onnx
  5. runtime predictions        overlays of val images (torch-free)   -> work_dirs/report/overlays/
  6. R-50 stand-in              random published-layout checkpoint   -> work_dirs/r50/r50_random.pth
  7. fps                        small model, and R-50 at 800x1333     -> work_dirs/bench/{tiny,r50}/fps.*
  8. PQ per backend + parity    small model on val                   -> work_dirs/bench/tiny/pq_parity.*
  9. report                     Markdown + pictures + charts         -> work_dirs/report/REPORT.md

Every step writes a file when it finishes; a re-run skips finished steps (``--force STEP`` redoes
one). On a machine with a GPU and TensorRT the fps and PQ tables gain the engine rows.

    python benchmarks/main_job.py [--force train] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from pfpn.training.progress import LiveLine, format_duration, parse_progress_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


class Paths:
    def __init__(self, base: Path) -> None:
        self.data = base / "data" / "synthetic"
        self.tiny = base / "work_dirs" / "tiny"
        self.ckpt = self.tiny / "final.pt"
        self.eval = self.tiny / "eval" / "pq.json"
        self.deploy = self.tiny / "deploy"
        self.r50 = base / "work_dirs" / "r50" / "r50_random.pth"
        self.bench = base / "work_dirs" / "bench"
        self.report = base / "work_dirs" / "report"


class StepFailed(RuntimeError):
    """A step's command exited with an error (the message has its log's tail)."""


def run(cmd: list[str], log: Path, env: dict | None = None, *, live: str | None = None) -> None:
    """Run a step's command with its output appended to ``log``; with ``live``, the command's
    ``[progress]`` lines (training/progress.py) become one live console line named ``live``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("  $ " + " ".join(str(c) for c in cmd), flush=True)
    line = LiveLine(live) if live else None
    with open(log, "a") as f:
        f.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        f.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})}, text=True, bufsize=1)
        assert proc.stdout is not None
        for text in proc.stdout:
            f.write(text)
            parsed = parse_progress_line(text) if line else None
            if parsed:
                line.update(*parsed)
        returncode = proc.wait()
    if line:
        line.close()
    if returncode != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        raise StepFailed(f"step failed (exit {returncode}): {' '.join(map(str, cmd))}\n  " + "\n  ".join(tail)
                         + f"\n(full log: {log})")


# Seconds each step took in the measured full run (README) and in a --quick run (2026-12-01, this
# 2-core machine), for the remaining-time estimate until this machine has timings of its own
# (work_dirs/report/step_seconds.json, full runs only).
EXPECTED_SECONDS = {
    False: {"data": 12, "train": 698, "evaluate": 11, "export": 20, "predict": 1, "r50": 6, "fps": 208, "pq": 24,
            "report": 5},
    True: {"data": 1, "train": 12, "evaluate": 5, "export": 15, "predict": 1, "r50": 5, "fps": 147, "pq": 10,
           "report": 5},
}


STEPS = ("data", "train", "evaluate", "export", "predict", "r50", "fps", "pq", "report")


def run_main_job(*, base: str | Path = ROOT, force: Sequence[str] = (), quick: bool = False) -> Path:
    """The pipeline (module docstring) under ``base``, redoing the steps in ``force``; ``quick``:
    the few-minute smoke version. -> REPORT.md. StepFailed when a step's command fails."""
    unknown = set(force) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown step(s) {sorted(unknown)}; the steps are {', '.join(STEPS)}")
    steps = STEPS
    paths = Paths(Path(base))
    q = quick
    log = paths.report / "logs"
    timings: dict[str, float] = {}
    t_job = time.time()
    timings_file = paths.report / "step_seconds.json"
    measured = json.loads(timings_file.read_text()) if timings_file.exists() and not q else {}
    expected = {**EXPECTED_SECONDS[q], **{k: v for k, v in measured.items() if k in steps}}
    settled: set[str] = set()  # steps finished or skipped in this run

    def remaining_estimate() -> str:
        left = sum(expected[s] for s in steps if s not in settled)
        return (f"{len(settled)}/{len(steps)} steps, {format_duration(time.time() - t_job)} elapsed, "
                f"about {format_duration(left)} to go")

    def step(name: str, done: Path) -> bool:
        if done.exists() and name not in force:
            settled.add(name)
            print(f"[{name}] done already ({done})", flush=True)
            return False
        print(f"[{name}] ... (main job: {remaining_estimate()})", flush=True)
        return True

    def timed(name: str, fn) -> None:
        t0 = time.time()
        fn()
        timings[name] = time.time() - t0
        settled.add(name)
        print(f"[{name}] finished in {timings[name]:.0f} s", flush=True)

    if step("data", paths.data / "annotations" / "panoptic_val2017.json"):
        counts = ["--num-train", "24", "--num-val", "6"] if q else ["--num-train", "1000", "--num-val", "100"]
        timed("data", lambda: run([PY, "training/make_synthetic.py", "--root", paths.data, *counts, "--overwrite",
                                   "--no-progress"], log / "data.log"))

    if step("train", paths.ckpt):
        resume = ["--resume"] if (paths.tiny / "latest.pt").exists() and "train" not in force else []
        extra = ["--max-iters", "20", "--epochs", "1", "--batch-size", "4"] if q else []
        cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "training/train.py", "--config",
               "tiny_synthetic", "--data-root", paths.data, "--work-dir", paths.tiny, "--threads", "1",
               "--progress-lines", "--log-every", "25", *extra, *resume]
        timed("train", lambda: run(cmd, log / "train.log", env={"OMP_NUM_THREADS": "1"}, live="train"))
        if q and not paths.ckpt.exists():  # --max-iters stops before the schedule ends
            (paths.tiny / "latest.pt").replace(paths.ckpt)

    if step("evaluate", paths.eval):
        timed("evaluate", lambda: run([PY, "training/evaluate.py", "--ckpt", paths.ckpt, "--data-root", paths.data,
                                       "--out", paths.eval.parent, "--threads", "2", "--no-progress"],
                                      log / "evaluate.log"))

    parity = paths.deploy / "parity_ort.json"
    if step("export", parity):
        def export() -> None:
            count = "4" if q else "24"
            for flavor, n in (("trt", "6" if not q else "2"), ("ort", count)):
                run([PY, "export/to_onnx.py", "--ckpt", paths.ckpt, "--flavor", flavor,
                     "--out", paths.deploy / f"final_{flavor}.onnx", "--verify", "--verify-count", n,
                     "--verify-json", paths.deploy / f"parity_{flavor}.json", "--threads", "2"], log / "export.log")
        timed("export", export)

    overlays = paths.report / "overlays"
    if step("predict", overlays / "done"):
        def predict() -> None:
            val = sorted((paths.data / "val2017").iterdir())[:6]
            run([PY, "runtime/predict.py", "--model", paths.deploy / "final_ort.onnx", *val, "--out",
                 paths.report / "predictions", "--threads", "2"], log / "predict.log")
            overlays.mkdir(parents=True, exist_ok=True)
            for png in sorted((paths.report / "predictions" / "overlay").glob("*.png")):
                png.replace(overlays / png.name)
            (overlays / "done").write_text("ok\n")
        timed("predict", predict)

    if step("r50", paths.r50):
        timed("r50", lambda: run([PY, "training/random_checkpoint.py", "--out", paths.r50, "--firing"],
                                 log / "r50.log"))

    if step("fps", paths.bench / "r50" / "fps.json"):
        def fps() -> None:
            run([PY, "benchmarks/fps.py", "--ckpt", paths.ckpt, "--images", paths.data / "val2017", "--count",
                 "2" if q else "8", "--runs", "1" if q else "3", "--out", paths.bench / "tiny", "--workdir",
                 paths.deploy], log / "fps.log", live="fps small")
            run([PY, "benchmarks/fps.py", "--ckpt", paths.r50, "--size", "480x800", "--count", "1" if q else "2",
                 "--runs", "1" if q else "3", "--calib-count", "4" if q else "8", "--out", paths.bench / "r50",
                 "--workdir", paths.r50.parent / "deploy"], log / "fps.log", live="fps R-50")
        timed("fps", fps)

    if step("pq", paths.bench / "tiny" / "pq_parity.json"):
        timed("pq", lambda: run([PY, "benchmarks/pq_parity.py", "--ckpt", paths.ckpt, "--data-root", paths.data,
                                 "--out", paths.bench / "tiny", "--workdir", paths.deploy], log / "pq.log"))

    previous = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    previous.update(timings)
    paths.report.mkdir(parents=True, exist_ok=True)
    timings_file.write_text(json.dumps(previous, indent=2))

    if step("report", paths.report / "REPORT.md") or timings:
        from pfpn.benchmarks.report import write_report

        report = write_report(paths, previous)
        print(f"[report] {report}")
    print(f"main job: {time.time() - t_job:.0f} s this run; report: {paths.report / 'REPORT.md'}")
    return paths.report / "REPORT.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="append", default=[], choices=STEPS, help="redo this step (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="a few-minute smoke version: tiny dataset, 20 training iterations, few images")
    p.add_argument("--base", default=str(ROOT), help="where data/ and work_dirs/ go (default: the repository)")
    args = p.parse_args(argv)
    try:
        run_main_job(base=args.base, force=args.force, quick=args.quick)
    except StepFailed as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
