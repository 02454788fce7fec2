"""Exactly one ONNX Runtime package provides the ``onnxruntime`` module (runtime/ort_package.py):
on this machine from the real installed metadata, and the error messages on made-up listings."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util

import pytest

from pfpn.runtime import ort_package
from pfpn.runtime.ort_package import (FIX_COMMAND, OnnxRuntimeNotInstalledError, OnnxRuntimePackageError,
                                      check_onnxruntime_package, onnxruntime_distributions)


def test_exactly_one_distribution_provides_the_module_here():
    providers = md.packages_distributions().get("onnxruntime", [])
    assert sorted(set(providers)) == ["onnxruntime"], providers  # the cpu extra, not onnxruntime-gpu too
    dists = onnxruntime_distributions()
    assert list(dists) == ["onnxruntime"], dists
    assert dists["onnxruntime"] == md.version("onnxruntime")
    assert check_onnxruntime_package() == dists
    # onnxruntime-extensions (the export extra) provides another module: not an ONNX Runtime build
    if "onnxruntime_extensions" in md.packages_distributions():
        assert "onnxruntime-extensions" not in dists


class FakeDist:
    def __init__(self, name: str, version: str, top_level: str | None, files=()):
        self.metadata = {"Name": name}
        self.version = version
        self._top_level = top_level
        self.files = list(files)

    def read_text(self, filename: str):
        return self._top_level if filename == "top_level.txt" else None


def test_both_packages_installed_is_an_error_naming_both(monkeypatch):
    fakes = [FakeDist("onnxruntime", "1.32.0", "onnxruntime\n"), FakeDist("numpy", "2.0", "numpy\n"),
             FakeDist("onnxruntime_gpu", "1.32.0", None, files=["onnxruntime/__init__.py"]),
             FakeDist("onnxruntime-extensions", "0.14", "onnxruntime_extensions\n")]
    monkeypatch.setattr(ort_package.md, "distributions", lambda: iter(fakes))
    assert onnxruntime_distributions() == {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"}
    with pytest.raises(OnnxRuntimePackageError) as info:
        check_onnxruntime_package()
    text = str(info.value)
    assert "onnxruntime 1.32.0, onnxruntime-gpu 1.32.0" in text
    assert "overwrite" in text and FIX_COMMAND in text
    assert not isinstance(info.value, ImportError)


def test_other_builds_count_too():
    with pytest.raises(OnnxRuntimePackageError, match="onnxruntime-openvino 1.20.*ort-nightly-gpu 1.33"):
        check_onnxruntime_package({"onnxruntime-openvino": "1.20.0", "ort-nightly-gpu": "1.33.0.dev1"})


def test_none_installed_says_to_install_an_extra(monkeypatch):
    monkeypatch.setattr(ort_package.md, "distributions", lambda: iter([FakeDist("numpy", "2.0", "numpy\n")]))
    monkeypatch.setattr(ort_package.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OnnxRuntimeNotInstalledError) as info:
        check_onnxruntime_package()
    assert isinstance(info.value, ImportError) and isinstance(info.value, OnnxRuntimePackageError)
    assert '".[cpu]"' in str(info.value) and '".[gpu]"' in str(info.value)
    assert "onnxruntime-gpu" in str(info.value)


def test_module_without_metadata_is_accepted(monkeypatch):
    """A build from source on the path has no distribution to read: nothing to check against."""
    monkeypatch.setattr(ort_package.md, "distributions", lambda: iter([]))
    assert importlib.util.find_spec("onnxruntime") is not None
    assert check_onnxruntime_package() == {}


def test_opening_a_backend_runs_the_check(monkeypatch, tmp_path):
    from pfpn.runtime import backends

    monkeypatch.setattr(backends, "_PACKAGE_CHECKED", False)
    monkeypatch.setattr(ort_package, "onnxruntime_distributions",
                        lambda: {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"})
    with pytest.raises(OnnxRuntimePackageError, match="onnxruntime-gpu"):
        backends.OnnxRuntimeBackend(tmp_path / "any.onnx")
    assert backends._PACKAGE_CHECKED is False  # checked again next time
