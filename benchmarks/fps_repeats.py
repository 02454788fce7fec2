"""Do fps.py's speed-ups survive a noisy machine? Compare several runs of the same command.

    python benchmarks/fps.py ... --out runs/1 && python benchmarks/fps.py ... --out runs/2 && ...
    python benchmarks/fps_repeats.py runs/1/fps.json runs/2/fps.json runs/3/fps.json --out repeats.json

For every backend's speed-up over the PyTorch eager predictor (median latency of each run): the
value per run, the median over the runs and the largest deviation from that median in percent;
a ratio is stable when every run is within ``--tolerance`` (default 10 %) of the median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Sequence


def repeat_spread(runs: Sequence[dict], *, tolerance: float = 0.10) -> dict:
    """fps.json contents of several runs -> {"runs", "commits", "ratios": {backend: {"per_run",
    "median", "max_deviation_pct", "stable"}}, "tolerance_pct", "all_stable"}. A backend missing
    from a run (skipped there) is left out."""
    if len(runs) < 2:
        raise ValueError(f"need at least two runs to compare, got {len(runs)}")
    names = set.intersection(*(set(r.get("speedup", {})) for r in runs))
    ratios = {}
    for name in sorted(names):
        values = [float(r["speedup"][name]) for r in runs]
        med = statistics.median(values)
        dev = max(abs(v - med) / med for v in values)
        ratios[name] = {"per_run": values, "median": med, "max_deviation_pct": 100 * dev, "stable": dev <= tolerance}
    return {"runs": len(runs), "commits": sorted({r.get("provenance", {}).get("commit", "?") for r in runs}),
            "what": runs[0].get("what"), "command": runs[0].get("command"), "ratios": ratios,
            "tolerance_pct": 100 * tolerance, "all_stable": all(v["stable"] for v in ratios.values())}


def format_spread(spread: dict) -> str:
    lines = ["| backend | speed-up per run | median | largest deviation | within tolerance |", "|---|---|---|---|---|"]
    for name, v in spread["ratios"].items():
        lines.append(f"| {name} | {' / '.join(f'{x:.2f}' for x in v['per_run'])} | {v['median']:.2f}x | "
                     f"{v['max_deviation_pct']:.1f} % | {'yes' if v['stable'] else 'NO'} |")
    return "\n".join(lines)


def compare_fps_runs(*, runs: Sequence[str | Path], tolerance: float = 0.10, out: str | Path | None = None) -> dict:
    """The fps.json files of ``runs`` -> :func:`repeat_spread` (its table printed, and written as
    JSON to ``out``). OSError / ValueError / KeyError for unreadable or incomparable files."""
    spread = repeat_spread([json.loads(Path(path).read_text()) for path in runs], tolerance=tolerance)
    print(format_spread(spread))
    if out:
        Path(out).write_text(json.dumps(spread, indent=2))
        print(f"wrote {out}")
    return spread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="fps.json files of runs of the same command")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed deviation from the median (default 0.10)")
    p.add_argument("--out", help="write the comparison as JSON here")
    args = p.parse_args(argv)
    try:
        compare_fps_runs(runs=args.runs, tolerance=args.tolerance, out=args.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
