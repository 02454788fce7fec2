"""The runtime installs and runs without PyTorch: everything under runtime/ works with torch
made unimportable."""
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[2]

CODE = r"""
import sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
sys.modules["torchvision"] = None
import pfpn.runtime
from pfpn.runtime import Predictor
import pfpn.runtime.backends, pfpn.runtime.contract, pfpn.runtime.images, pfpn.runtime.panoptic_io, pfpn.runtime.fusion
import pfpn.runtime.mask_paste, pfpn.runtime.semantic_labels, pfpn.runtime.torch_sort, pfpn.runtime.float32_ops
import pfpn.runtime.preprocess, pfpn.runtime.result, pfpn.runtime.writers, pfpn.runtime.predictor
predictor = Predictor({model!r}, threads=1)
result = predictor.predict({image!r})
loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("torch", "torchvision")]
assert not loaded, loaded
print("segments", len(result.segments_info), result.id_map.shape)
"""


def test_runtime_without_torch(tiny_onnx, synthetic_root, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), cv2.imread(str(next((synthetic_root / "val2017").iterdir()))))
    code = CODE.format(root=str(ROOT), model=str(tiny_onnx), image=str(image))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "segments" in proc.stdout


def test_no_torch_import_in_runtime_sources():
    for path in (ROOT / "runtime").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import torch", "from torch")), f"{path}: {line}"


def test_engine_builder_and_plugins_import_without_torch():
    """Building a trt-flavor engine loads plugins/trt_plugins.py; neither may pull in PyTorch."""
    code = ("import sys\nsys.modules['torch'] = None\nsys.modules['torchvision'] = None\n"
            "import pfpn.runtime.build_engine, pfpn.plugins.trt_plugins, pfpn.plugins.ort_ops, pfpn.plugins.names\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
