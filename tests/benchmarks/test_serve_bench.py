"""benchmarks/serve_bench.py: its statistics by hand, and a short run against the real server."""
import pytest

from pfpn.benchmarks.serve_bench import ServeRow, format_serve_table, serve_row


def test_row_statistics_by_hand():
    r = serve_row("http", 4, [0.010, 0.030, 0.020, 0.040, 0.100], seconds=0.5)
    assert (r.requests, r.images_per_s) == (5, 10.0)
    assert r.p50_ms == pytest.approx(30.0) and r.p99_ms == pytest.approx(100.0)  # nearest rank of 5


def test_table_relates_every_row_to_the_best_in_process_rate():
    rows = [ServeRow("in-process", 1, 8, 1.0, 8.0, 120, 130), ServeRow("in-process", 2, 8, 0.8, 10.0, 190, 200),
            ServeRow("grpc", 16, 8, 1.0, 8.5, 900, 950)]
    table = format_serve_table(rows)
    assert "| in-process | 1 | 8 | 8.00 | 80 % | 120 | 130 |" in table
    assert "| grpc | 16 | 8 | 8.50 | 85 % | 900 | 950 |" in table


@pytest.mark.xdist_group("triton")
def test_short_run_against_the_server(tiny_onnx, synthetic_root, tmp_path):
    import cv2

    from pfpn.runtime.triton_server import TritonUnavailable, find_triton

    try:
        find_triton()
    except TritonUnavailable as e:
        pytest.skip(str(e).splitlines()[0])
    pytest.importorskip("tritonclient.http")
    from pfpn.benchmarks.serve_bench import run_serve_bench
    from pfpn.benchmarks.targets import open_target

    images = [cv2.imread(str(p)) for p in sorted((synthetic_root / "val2017").glob("*.jpg"))[:2]]
    target = open_target("ort_fp32", tiny_onnx, threads=2)
    rows = run_serve_bench(target=target, images=images, requests=4, concurrencies=[1, 2], protocols=["http"],
                           threads=2, instances=1, workdir=tmp_path)
    assert [(r.mode, r.concurrency) for r in rows] == [("in-process", 1), ("in-process", 2), ("http", 1), ("http", 2)]
    assert all(r.requests == 4 and r.images_per_s > 0 and r.p99_ms >= r.p50_ms > 0 for r in rows)
