"""A TensorRT engine file and its JSON sidecar (``<engine>.json``): what makes an engine
self-describing.

The engine itself stays a plain TensorRT plan (``trtexec --loadEngine`` reads it). The sidecar
records: the model metadata of the ONNX it was built from (runtime/contract.py ModelMetadata:
contract, categories, thresholds), the TensorRT version and API path that built it, precision,
the optimisation profile, the device (name, compute capability), the plugins it contains (name,
namespace, version, kernel PTX target/ISA version), and the engine's size and SHA-256 so that a
sidecar can never describe a different engine. :func:`read_engine` refuses, with a message that
says what to do, an engine built by another TensorRT version or for another GPU architecture
(TensorRT plans are neither version- nor architecture-portable).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pfpn.runtime.contract import ModelMetadata

SIDECAR_FORMAT = "pfpn-trt-engine/1"


class EngineFileError(RuntimeError):
    pass


class EngineCompatibilityError(EngineFileError):
    pass


@dataclass
class PluginInfo:
    name: str  # e.g. "MultiLevelRoIAlign"
    namespace: str  # e.g. "pfpn"
    version: str  # e.g. "1"
    implementation: str  # "aot-ptx" (kernel embedded in the engine) or "native" (TensorRT layer/plugin)
    kernel: dict[str, Any] = field(default_factory=dict)  # ptx target, ISA version, warps, shared memory


@dataclass
class EngineInfo:
    tensorrt_version: str
    trt_api: str  # "10" (weakly typed, builder flags) or "11" (strongly typed, precision in the ONNX)
    precision: str  # "fp32", "fp16" or "int8"
    profile: dict[str, str]  # {"min": "BxHxW", "opt": ..., "max": ...}
    model_metadata: dict[str, str]  # ModelMetadata.to_props()
    device_name: str = ""
    compute_capability: str = ""  # "9.0"
    plugins: list[PluginInfo] = field(default_factory=list)
    onnx_file: str = ""
    onnx_sha256: str = ""
    engine_bytes: int = 0
    engine_sha256: str = ""
    built_at: str = ""
    build_options: dict[str, Any] = field(default_factory=dict)
    format: str = SIDECAR_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "sidecar") -> "EngineInfo":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise EngineFileError(f"{source} is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise EngineFileError(f"{source} is not a JSON object")
        if raw.get("format") != SIDECAR_FORMAT:
            raise EngineFileError(f"{source} has format {raw.get('format')!r}, this runtime reads {SIDECAR_FORMAT!r}; "
                                  f"rebuild the engine with runtime/build_engine.py")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("tensorrt_version", "trt_api", "precision", "profile", "model_metadata") if k not in raw]
        if missing:
            raise EngineFileError(f"{source} lacks {', '.join(missing)}")
        kwargs = {k: v for k, v in raw.items() if k in known}
        kwargs["plugins"] = [PluginInfo(**p) for p in raw.get("plugins", [])]
        return cls(**kwargs)

    def metadata(self) -> ModelMetadata:
        return ModelMetadata.from_props(self.model_metadata)


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_engine(engine_path: str | os.PathLike, engine: bytes, info: EngineInfo) -> None:
    """Write engine and sidecar atomically: both are complete temporary files before either is
    renamed into place (sidecar last), and nothing is left behind on failure."""
    from pfpn.runtime.files import temporary_sibling

    path = Path(engine_path)
    info.engine_bytes = len(engine)
    info.engine_sha256 = sha256_bytes(engine)
    tmp_engine = temporary_sibling(path)
    tmp_sidecar = temporary_sibling(sidecar_path(path))
    try:
        Path(tmp_engine).write_bytes(engine)
        Path(tmp_sidecar).write_text(info.to_json() + "\n")
        os.replace(tmp_engine, path)
        os.replace(tmp_sidecar, sidecar_path(path))
    except BaseException:
        for tmp in (tmp_engine, tmp_sidecar):
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def read_engine_info(engine_path: str | os.PathLike) -> EngineInfo:
    side = sidecar_path(engine_path)
    if not Path(engine_path).is_file():
        raise EngineFileError(f"engine {engine_path} not found")
    if not side.is_file():
        raise EngineFileError(f"engine {engine_path} has no sidecar {side.name}: it was not built by "
                              f"runtime/build_engine.py (or the sidecar was not copied with it); rebuild it")
    return EngineInfo.from_json(side.read_text(), str(side))


def _major_minor_patch(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


def check_compatible(info: EngineInfo, tensorrt_version: str, compute_capability: str | None = None) -> None:
    """Raise EngineCompatibilityError unless this TensorRT / GPU can run the engine. TensorRT plans
    load only into the same TensorRT version (major.minor.patch) and, unless built hardware-
    compatible, the same compute capability."""
    if _major_minor_patch(info.tensorrt_version) != _major_minor_patch(tensorrt_version):
        raise EngineCompatibilityError(
            f"engine was built with TensorRT {info.tensorrt_version} but this runtime has TensorRT {tensorrt_version}; "
            f"TensorRT engines are not portable across versions: rebuild it with runtime/build_engine.py here "
            f"(or install TensorRT {'.'.join(_major_minor_patch(info.tensorrt_version))})")
    if compute_capability and info.compute_capability and compute_capability != info.compute_capability:
        raise EngineCompatibilityError(
            f"engine was built for a GPU of compute capability {info.compute_capability} ({info.device_name}) but this "
            f"GPU has compute capability {compute_capability}; rebuild the engine on this GPU")


def read_engine(engine_path: str | os.PathLike, tensorrt_version: str,
                compute_capability: str | None = None) -> tuple[bytes, EngineInfo]:
    """-> (engine bytes, sidecar info), after the version / architecture / integrity checks."""
    info = read_engine_info(engine_path)
    check_compatible(info, tensorrt_version, compute_capability)
    data = Path(engine_path).read_bytes()
    if info.engine_bytes and (len(data) != info.engine_bytes or sha256_bytes(data) != info.engine_sha256):
        raise EngineFileError(f"engine {engine_path} does not match its sidecar (size or SHA-256 differ): the engine "
                              f"was replaced or truncated; rebuild it")
    return data, info
