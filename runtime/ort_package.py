"""Which ONNX Runtime package is installed, from the installed metadata (torch-free).

Several distributions provide the one module ``onnxruntime``: ``onnxruntime`` (CPU, the ``cpu``
extra), ``onnxruntime-gpu`` (CUDA and TensorRT execution providers, the ``gpu`` extra) and other
builds (``onnxruntime-openvino``, ``onnxruntime-directml``, ``ort-nightly*``, ...). pip installs
each into the same ``onnxruntime/`` folder, so with two of them the files of whichever was
installed last overwrite the other's, and the module is a mix of both (typically: the GPU package
is installed but CUDA is missing from ``get_available_providers()``). :func:`check_onnxruntime_package`
is called when an ONNX Runtime backend is opened (runtime/backends.py) and raises
:class:`OnnxRuntimePackageError` with the fix in that case.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
from typing import Mapping

MODULE = "onnxruntime"
# distributions known to provide the module (others are found by their top-level names)
KNOWN_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                       "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-migraphx", "onnxruntime-training",
                       "onnxruntime-silicon", "ort-nightly", "ort-nightly-gpu", "ort-nightly-directml")
FIX_COMMAND = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
INSTALL_HINT = ('install exactly one ONNX Runtime package through an extra of this project: pip install ".[cpu]" '
                '(onnxruntime, CPU) or pip install ".[gpu]" (onnxruntime-gpu, CUDA / TensorRT)')


class OnnxRuntimePackageError(RuntimeError):
    """The installed ONNX Runtime packages cannot give a working ``onnxruntime`` module."""


class OnnxRuntimeNotInstalledError(OnnxRuntimePackageError, ImportError):
    """No ONNX Runtime package is installed (the base install has none: it comes from an extra)."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _provides_module(dist: md.Distribution) -> bool:
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        return MODULE in top_level.split()
    return any(str(f).replace("\\", "/").split("/")[0] == MODULE for f in (dist.files or ()))


def onnxruntime_distributions() -> dict[str, str]:
    """The installed distributions that provide the ``onnxruntime`` module -> their versions,
    sorted by name (read from the installed metadata: the known ONNX Runtime builds, and any
    ``onnxruntime*`` / ``ort-*`` distribution whose top-level names include ``onnxruntime``;
    ``onnxruntime-extensions`` and the like, which provide other modules, are not listed)."""
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = _canonical(dist.metadata["Name"] or "")
        if name in found:
            continue  # the first on sys.path is the one imported
        if name in KNOWN_DISTRIBUTIONS or ((name.startswith("onnxruntime") or name.startswith("ort-"))
                                           and _provides_module(dist)):
            found[name] = dist.version
    return dict(sorted(found.items()))


def describe_distributions(distributions: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in distributions.items())


def check_onnxruntime_package(distributions: Mapping[str, str] | None = None) -> dict[str, str]:
    """Exactly one ONNX Runtime distribution is installed -> {name: version} (empty when the
    module is importable without any metadata, e.g. a build from source on the path).

    Raises :class:`OnnxRuntimePackageError` when several are (they overwrite each other's files
    in the same ``onnxruntime/`` folder) and :class:`OnnxRuntimeNotInstalledError` when there is
    none. ``distributions``: what :func:`onnxruntime_distributions` returns (read when None)."""
    dists = dict(onnxruntime_distributions() if distributions is None else distributions)
    if len(dists) > 1:
        raise OnnxRuntimePackageError(
            f"several ONNX Runtime packages are installed: {describe_distributions(dists)}. They all provide "
            f"the same module, onnxruntime, in the same folder, so the files of the one installed last overwrite "
            f"the others' and the module is a mix of them (e.g. onnxruntime-gpu installed but no "
            f"CUDAExecutionProvider). Keep exactly one; for the GPU: {FIX_COMMAND} (for the CPU: "
            f"pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime)")
    if not dists and importlib.util.find_spec(MODULE) is None:
        raise OnnxRuntimeNotInstalledError(f"ONNX Runtime is not installed: {INSTALL_HINT}")
    return dists
