"""The Triton model repository (runtime/triton_repo.py) served by the real tritonserver that
nvidia-pytriton bundles (runtime/triton_server.py), against runtime.Predictor on the same images.
`make test` installs the server into .triton/ first; without it these tests skip with the reason."""
from __future__ import annotations

import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfpn.runtime.triton_repo import write_model_repository
from pfpn.runtime.triton_server import TritonServer, TritonUnavailable, find_triton

pytestmark = pytest.mark.xdist_group("triton")


def _install_or_skip():
    try:
        find_triton()
    except TritonUnavailable as e:
        pytest.skip(str(e).splitlines()[0])
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the dev extra has it)")


@pytest.fixture(scope="module")
def repository(tiny_onnx, tmp_path_factory) -> Path:
    return write_model_repository(model=tiny_onnx, out=tmp_path_factory.mktemp("triton") / "repo", instances=1,
                                  threads=1, max_batch_size=8, queue_delay_us=20000)


@pytest.fixture(scope="module")
def server(repository):
    _install_or_skip()
    with TritonServer(repository) as running:
        yield running


@pytest.fixture(scope="module")
def images(synthetic_root, tmp_path_factory) -> list[Path]:
    """The synthetic val images as PNG files (the server's interpreter has another OpenCV, and JPEG
    decoder, than the tests'; PNG decodes to the same pixels in both), every other one shrunk to
    90x120: a different size that REFERENCE §2's resize puts on the same padded canvas, so the dynamic
    batcher's batches mix image sizes."""
    folder = tmp_path_factory.mktemp("png")
    paths = []
    for k, jpg in enumerate(sorted((synthetic_root / "val2017").glob("*.jpg"))):
        image = cv2.imread(str(jpg))
        if k % 2:
            image = cv2.resize(image, (120, 90), interpolation=cv2.INTER_AREA)
        paths.append(folder / f"{jpg.stem}.png")
        cv2.imwrite(str(paths[-1]), image)
    assert len(paths) >= 4 and len({cv2.imread(str(p)).shape for p in paths}) == 2
    return paths


def _metric(server: TritonServer, name: str, model: str = "pfpn_panoptic") -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    values = [float(m.group(1)) for m in re.finditer(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)]
    assert values, f"{name} for {model} not in /metrics"
    return sum(values)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_id_maps_equal_the_predictor(server, tiny_onnx, images, protocol):
    from pfpn.runtime.predictor import Predictor
    from pfpn.runtime.triton_client import TritonPanopticClient

    expected = [Predictor(tiny_onnx, threads=1).predict(p) for p in images]
    url = server.http_url if protocol == "http" else server.grpc_url
    client = TritonPanopticClient(url, protocol=protocol)
    assert client.metadata.categories == Predictor(tiny_onnx).metadata.categories  # metadata from the config
    requests_before = _metric(server, "nv_inference_request_success")
    executions_before = _metric(server, "nv_inference_exec_count")
    jobs = [i % len(images) for i in range(64)]
    payloads = [p.read_bytes() if i % 2 else cv2.imread(str(p)) for i, p in enumerate(images)]  # bytes and BGR arrays
    # the first 8 requests leave together, so the batcher has several queued at once (later ones
    # arrive as the clients get their answers: on a busy machine they need not overlap)
    first_wave = threading.Barrier(8)

    def one(job):
        k, i = job
        if k < 8:
            first_wave.wait(timeout=60)
        return i, client.predict(payloads[i])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, enumerate(jobs)))
    for i, result in results:
        assert np.array_equal(result.id_map, expected[i].id_map), images[i].name
        assert result.segments_info == expected[i].segments_info
    deadline = time.monotonic() + 10  # the counters are updated just after the responses: poll briefly
    while True:
        requests = _metric(server, "nv_inference_request_success") - requests_before
        executions = _metric(server, "nv_inference_exec_count") - executions_before
        if requests >= 64 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert requests == 64 and executions < requests, (requests, executions)  # the dynamic batcher batched


def test_malformed_requests_get_errors_naming_the_problem(server, images):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    from pfpn.runtime.triton_client import TritonPanopticClient

    client = TritonPanopticClient(server.http_url)
    good = images[0].read_bytes()
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    huge = png[:16] + (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big") + png[24:]
    cases = [(b"this is not an image", "cannot decode"), (good[: len(good) // 2], "truncated"),
             (huge, "30000x30000, too large"), (np.zeros((10, 12, 3), np.float32), "FP32"),
             (np.zeros((10, 12, 3), np.uint8)[:, :0], "empty image")]
    for data, message in cases:
        with pytest.raises(InferenceServerException, match=message):
            client.predict(data)
    raw = http.InferenceServerClient(server.http_url)
    empty = http.InferInput("IMAGE", [1, 0], "UINT8")
    empty.set_data_from_numpy(np.zeros((1, 0), np.uint8))
    with pytest.raises(InferenceServerException, match="empty data"):
        raw.infer("pfpn_panoptic", [empty])
    with pytest.raises(InferenceServerException, match="request has 0 inputs"):  # Triton itself refuses it
        raw.infer("pfpn_panoptic", [])
    both = [http.InferInput("IMAGE", [1, len(good)], "UINT8"), http.InferInput("IMAGE_BGR", [1, 8, 8, 3], "UINT8")]
    both[0].set_data_from_numpy(np.frombuffer(good, np.uint8)[None])
    both[1].set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InferenceServerException, match="exactly one of IMAGE"):
        raw.infer("pfpn_panoptic", both)
    assert server.is_ready()
    assert client.predict(good).id_map.shape == cv2.imread(str(images[0])).shape[:2]


def _group_rss_mb(pid: int) -> float:
    """Resident memory of the server and its Python stubs (the process group)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid:  # pgrp
                total += int(fields[21]) * 4096  # rss pages
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def test_memory_stays_flat_over_500_requests(server, images):
    from pfpn.runtime.triton_client import TritonPanopticClient

    client = TritonPanopticClient(server.http_url)
    data = [p.read_bytes() for p in images]
    with ThreadPoolExecutor(4) as pool:
        # warm: every image, and the batch sizes the dynamic batcher forms at this concurrency
        list(pool.map(lambda i: client.predict(data[i % len(data)]), range(200)))
        before = _group_rss_mb(server.process.pid)
        list(pool.map(lambda i: client.predict(data[i % len(data)]), range(500)))
    after = _group_rss_mb(server.process.pid)
    message = f"server resident memory: {before:.0f} MB after 200 requests, {after:.0f} MB after 700"
    print(message)
    assert before > 50 and after <= 1.10 * before, message


def test_killed_server_fails_clients_fast_and_a_restart_serves(repository, images):
    _install_or_skip()
    from pfpn.runtime.triton_client import TritonPanopticClient

    server = TritonServer(repository).start()
    try:
        client = TritonPanopticClient(server.http_url, timeout=10)
        data = images[0].read_bytes()
        outcomes: list[str] = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    client.predict(data)
                    outcomes.append("ok")
                except Exception:
                    outcomes.append("error" if time.monotonic() - t0 < 12 else "slow error")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        server.kill()
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert "ok" in outcomes and "error" in outcomes and "slow error" not in outcomes
        server.start()  # new ports, same repository
        assert TritonPanopticClient(server.http_url).predict(data).id_map.size > 0
    finally:
        server.stop()


def test_repository_layout_and_config(tiny_onnx, tmp_path):
    import json

    from pfpn.runtime.backends import read_model_metadata

    repo = write_model_repository(model=tiny_onnx, out=tmp_path / "repo", instances=3, threads=2, max_batch_size=4)
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "pfpn_network/1/model.onnx", "pfpn_network/1/model.py", "pfpn_network/config.pbtxt",
        "pfpn_panoptic/1/model.py", "pfpn_panoptic/config.pbtxt"]
    panoptic = (repo / "pfpn_panoptic" / "config.pbtxt").read_text()
    network = (repo / "pfpn_network" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in panoptic and "allow_ragged_batch: true" in panoptic and "count: 3" in panoptic
    assert 'key: "threads" value: { string_value: "2" }' in network and "count: 3 kind: KIND_CPU" in network
    props = json.loads(json.loads(re.search(r'key: "pfpn_metadata" value: \{ string_value: (".*") \}', panoptic).group(1)))
    assert props == read_model_metadata(tiny_onnx).to_props()
    native = write_model_repository(model=tiny_onnx, out=tmp_path / "native", network_backend="onnxruntime")
    assert 'backend: "onnxruntime"' in (native / "pfpn_network" / "config.pbtxt").read_text()
    assert not (native / "pfpn_network" / "1" / "model.py").exists()


def test_repository_refuses_bad_requests_and_writes_nothing(tiny_onnx, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not read")
    with pytest.raises(ValueError, match="a TensorRT engine is served by --network-backend tensorrt"):
        write_model_repository(model=engine, out=tmp_path / "a")
    engine.unlink()
    with pytest.raises(ValueError, match="network backend must be one of"):
        write_model_repository(model=tiny_onnx, out=tmp_path / "a", network_backend="tflite")
    with pytest.raises(ValueError, match="instances"):
        write_model_repository(model=tiny_onnx, out=tmp_path / "a", instances=0)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        write_model_repository(model=tmp_path / "missing.onnx", out=tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        write_model_repository(model=tiny_onnx, out=tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no half-written repository, no temporary left


def test_tensorrt_repository_from_a_trt_flavor_file_passes_the_conformance_rules(tiny_trt_onnx, tiny_onnx, tmp_path):
    import onnx
    from onnx import helper

    repo = write_model_repository(model=tiny_trt_onnx, out=tmp_path / "trt", network_backend="tensorrt")
    config = (repo / "pfpn_network" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "KIND_GPU" in config
    assert (repo / "pfpn_network" / "1" / "model.onnx").is_file()  # model.plan is built on the serving GPU
    with pytest.raises(ValueError, match="needs a trt-flavor export"):
        write_model_repository(model=tiny_onnx, out=tmp_path / "ort", network_backend="tensorrt")
    # the graph from before the uint8 fix: a Transpose on the uint8 input, which TensorRT refuses
    model = onnx.load(str(tiny_trt_onnx))
    first = next(n for n in model.graph.node if "images" in n.input)
    first.input[list(first.input).index("images")] = "images_nhwc"
    model.graph.node.insert(0, helper.make_node("Transpose", ["images"], ["images_nhwc"], perm=[0, 1, 2, 3]))
    broken = tmp_path / "broken_trt.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ValueError, match="TensorRT conformance errors"):
        write_model_repository(model=broken, out=tmp_path / "broken", network_backend="tensorrt")
    assert not (tmp_path / "broken").exists()
