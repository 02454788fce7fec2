"""benchmarks/fps_repeats.py on hand-built fps.json contents."""
import json

import pytest

from pfpn.benchmarks.fps_repeats import main, repeat_spread


def _run(commit, **speedup):
    return {"what": "R-50", "command": "python benchmarks/fps.py", "provenance": {"commit": commit},
            "speedup": speedup}


def test_spread_per_backend():
    runs = [_run("abc", ort_int8=4.0, ort_fp32=1.5, openvino=1.7), _run("abc", ort_int8=4.36, ort_fp32=1.8),
            _run("abc", ort_int8=3.8, ort_fp32=1.5)]
    spread = repeat_spread(runs)
    assert set(spread["ratios"]) == {"ort_fp32", "ort_int8"}  # openvino ran once only
    int8 = spread["ratios"]["ort_int8"]
    assert int8["per_run"] == [4.0, 4.36, 3.8] and int8["median"] == 4.0
    assert int8["max_deviation_pct"] == pytest.approx(9.0) and int8["stable"]  # 4.36 is 9 % above 4.0
    fp32 = spread["ratios"]["ort_fp32"]
    assert fp32["max_deviation_pct"] == pytest.approx(20.0) and not fp32["stable"]
    assert not spread["all_stable"] and spread["commits"] == ["abc"] and spread["runs"] == 3


def test_cli_writes_json_and_rejects_one_run(tmp_path, capsys):
    paths = []
    for i, value in enumerate((5.0, 5.2)):
        path = tmp_path / f"fps{i}.json"
        path.write_text(json.dumps(_run("def", ort_int8=value)))
        paths.append(str(path))
    assert main([*paths, "--out", str(tmp_path / "spread.json")]) == 0
    assert "| ort_int8 | 5.00 / 5.20 | 5.10x | 2.0 % | yes |" in capsys.readouterr().out
    assert json.loads((tmp_path / "spread.json").read_text())["all_stable"] is True
    assert main(paths[:1]) == 2
    assert "need at least two runs" in capsys.readouterr().err
