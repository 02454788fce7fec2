"""Send images to a Triton server serving runtime/triton_repo.py's repository; write what
runtime/predict.py writes (COCO panoptic PNGs + JSON, overlays).

    python runtime/triton_client.py --url 127.0.0.1:8000 street.jpg more/ --out predictions/
    python runtime/triton_client.py --url 127.0.0.1:8001 --protocol grpc images/ --out out/ --concurrency 8

As a library (``tritonclient`` is the only extra dependency):

    from pfpn.runtime.triton_client import TritonPanopticClient
    client = TritonPanopticClient("127.0.0.1:8000")            # protocol="grpc" for port 8001
    result = client.predict(open("street.jpg", "rb").read())   # or an (H, W, 3) uint8 BGR array
    result.id_map, result.segments_info                          # as runtime.Predictor returns them

Torch-free.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


from pfpn.runtime.contract import ModelMetadata  # noqa: E402
from pfpn.runtime.categories import CategoryTable  # noqa: E402
from pfpn.runtime.result import PanopticResult  # noqa: E402

PANOPTIC_MODEL = "pfpn_panoptic"
PROTOCOLS = ("http", "grpc")


class TritonPanopticClient:
    """One connection per thread to ``url`` (host:port), HTTP or gRPC (KServe v2 protocol).

    Args:
        url: the server's HTTP (default port 8000) or gRPC (8001) address.
        protocol: "http" or "grpc".
        timeout: seconds a request may take before it fails with an error.
        model: the panoptic model's name in the repository.
    """

    def __init__(self, url: str, *, protocol: str = "http", timeout: float = 60.0, model: str = PANOPTIC_MODEL) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        try:
            if protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
        except ImportError as e:
            raise ImportError("the Triton client is not installed (pip install 'tritonclient[http,grpc]')") from e
        self.url, self.protocol, self.timeout, self.model = url, protocol, timeout, model
        self._module = module
        self._local = threading.local()
        self.metadata = self._read_metadata()
        self.categories = CategoryTable(self.metadata.categories)

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._module.InferenceServerClient(self.url, connection_timeout=self.timeout,
                                                            network_timeout=self.timeout)
            else:
                client = self._module.InferenceServerClient(self.url)
            self._local.client = client
        return client

    def _read_metadata(self) -> ModelMetadata:
        config = self._client().get_model_config(self.model, **({"as_json": True} if self.protocol == "grpc" else {}))
        config = config.get("config", config)
        params = config.get("parameters", {})
        if "pfpn_metadata" not in params:
            raise ValueError(f"model {self.model!r} at {self.url} has no pfpn_metadata parameter: not a repository "
                             "written by runtime/triton_repo.py")
        value = params["pfpn_metadata"]
        return ModelMetadata.from_props(json.loads(value.get("string_value", value.get("stringValue", ""))))

    def predict(self, image: bytes | np.ndarray) -> PanopticResult:
        """Encoded image bytes or an (H, W, 3) uint8 BGR array -> PanopticResult; raises the
        client library's InferenceServerException with the server's message on an error."""
        m = self._module
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = np.frombuffer(bytes(image), np.uint8)[None]
            tensor = m.InferInput("IMAGE", list(data.shape), "UINT8")
        else:
            from tritonclient.utils import np_to_triton_dtype

            data = np.ascontiguousarray(image)[None]  # sent as it is: the server names a wrong dtype or shape
            tensor = m.InferInput("IMAGE_BGR", list(data.shape), np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        outputs = [m.InferRequestedOutput("ID_MAP"), m.InferRequestedOutput("SEGMENTS_INFO")]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        response = self._client().infer(self.model, [tensor], outputs=outputs, **kwargs)
        info = response.as_numpy("SEGMENTS_INFO").reshape(-1)[0]
        segments = json.loads(info.decode() if isinstance(info, bytes) else str(info))
        return PanopticResult(response.as_numpy("ID_MAP")[0].astype(np.int64), segments)


def predict_folder(*, url: str, images: list[Path], out: Path, protocol: str = "http", concurrency: int = 4,
                   overlays: bool = True, timeout: float = 60.0) -> tuple[int, int]:
    """Send every image (``concurrency`` requests in flight) and write the COCO panoptic PNGs +
    JSON (+ overlays) to ``out`` -> (images answered, images failed)."""
    from pfpn.runtime.images import ImageError, read_image
    from pfpn.runtime.writers import save_overlay, write_coco_panoptic

    client = TritonPanopticClient(url, protocol=protocol, timeout=timeout)

    def one(path: Path):
        try:
            return path, client.predict(path.read_bytes()), None
        except Exception as e:  # the server's message, one image at a time
            return path, None, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

    results, failed = [], 0
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for path, result, error in pool.map(one, images):
            if error is not None:
                print(f"error: {path}: {error}", file=sys.stderr)
                failed += 1
                continue
            results.append(({"image_id": path.stem, "file_name": path.name, "png_name": f"{path.stem}.png"}, result))
            if overlays:
                try:
                    save_overlay(out / "overlay" / f"{path.stem}.png", read_image(path), result, client.categories)
                except (ImageError, FileNotFoundError):
                    pass
            print(f"{path}: {len(result.segments_info)} segments", flush=True)
    if results:
        write_coco_panoptic(results, client.categories.to_json(), out)
    return len(results), failed


def main(argv: list[str] | None = None) -> int:
    from pfpn.runtime.images import ImageError, list_images

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="host:port of the server (HTTP 8000 / gRPC 8001 by default)")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--no-overlay", action="store_true")
    args = p.parse_args(argv)
    try:
        paths = list_images(args.images)
    except (FileNotFoundError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        done, failed = predict_folder(url=args.url, images=paths, out=Path(args.out), protocol=args.protocol,
                                      concurrency=args.concurrency, overlays=not args.no_overlay, timeout=args.timeout)
    except Exception as e:  # cannot reach the server, not our repository, no tritonclient
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"{done} images in {time.perf_counter() - t0:.1f} s ({failed} failed) -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
