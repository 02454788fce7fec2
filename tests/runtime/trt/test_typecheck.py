"""mypy over the TensorRT code (runtime/build_engine.py, runtime/trt/, plugins/trt_plugins.py)
against the tensorrt-stubs package (TensorRT 10.13's Python API), since that code cannot run here.

The stubs need two repairs to be usable: they ship as ``tensorrt/__init__.pyi`` without a
``py.typed`` marker (mypy ignores such a package in site-packages), and a few generated
signatures are not valid Python (a parameter named ``in``, a parameter without default after
defaulted ones). The test copies them to a temporary MYPYPATH folder, replaces each invalid
``def`` line with a ``(*args, **kwargs)`` signature (methods of plugin interfaces we do not call)
and adds an empty ``tensorrt_libs`` stub; errors inside the stubs themselves are not reported.
A control file with wrong TensorRT calls proves the stubs are in effect.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# modules (-m) and packages (-p), by their import names
TARGETS = ["-m", "pfpn.runtime.build_engine", "-p", "pfpn.runtime.trt", "-m", "pfpn.runtime.cuda_driver",
           "-m", "pfpn.plugins.trt_plugins"]
FOLDERS = ("training", "export", "runtime", "plugins", "benchmarks")
_DEF = re.compile(r"^(\s*)def (\w+)\((self\b)?.*\)(\s*->\s*.+)?:\s*$")


def _repair(text: str) -> str:
    lines = text.splitlines()
    for _ in range(500):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines) + "\n"
        except SyntaxError as e:
            i = (e.lineno or 1) - 1
            m = _DEF.match(lines[i])
            if not m:
                raise
            ret = m.group(4) or " -> typing.Any"
            self_ = "self, " if m.group(3) else ""
            lines[i] = f"{m.group(1)}def {m.group(2)}({self_}*args: typing.Any, **kwargs: typing.Any){ret}:"
    raise RuntimeError("too many invalid lines in the stubs")


def _stub_dir(dest: Path) -> Path | None:
    for pkg in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            return None
        src = Path(list(spec.submodule_search_locations)[0])
        stubs = sorted(src.glob("*.pyi"))
        if not stubs:
            return None
        (dest / pkg).mkdir(parents=True, exist_ok=True)
        for f in stubs:
            (dest / pkg / f.name).write_text(_repair(f.read_text()))
    (dest / "tensorrt_libs").mkdir(exist_ok=True)
    (dest / "tensorrt_libs" / "__init__.pyi").write_text("")
    return dest


CONTROL = '''
import tensorrt as trt

def wrong() -> None:
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    builder.create_network("strongly typed")
    trt.BuilderFlag.NOT_A_FLAG
'''


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    tmp = tmp_path_factory.mktemp("mypy")
    stubs = _stub_dir(tmp / "stubs")
    if stubs is None:
        pytest.skip("tensorrt-stubs are not installed")
    # the import root as mypy can read it: pfpn/<folder> links to the checkout's folders (the
    # editable install maps them with an import hook, which mypy does not run)
    source = tmp / "src"
    (source / "pfpn").mkdir(parents=True)
    for folder in FOLDERS:
        (source / "pfpn" / folder).symlink_to(ROOT / folder, target_is_directory=True)
    config = tmp / "mypy.ini"
    config.write_text("[mypy]\npython_version = 3.11\nfollow_imports = silent\nshow_error_codes = True\n"
                      "[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt_libs.*]\nignore_errors = True\n")
    return tmp, stubs, config


def _mypy(tmp, stubs, config, targets):
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(stubs), str(tmp / "src")]))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
                           str(tmp / "cache"), *targets], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=170)


def test_tensorrt_code_type_checks(mypy_env):
    tmp, stubs, config = mypy_env
    (tmp / "src" / "trt_control.py").write_text(CONTROL)  # a module beside pfpn (mypy takes modules or files)
    proc = _mypy(tmp, stubs, config, [*TARGETS, "-m", "trt_control"])
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2: mypy itself failed
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    ours = [e for e in errors if "trt_control.py" not in e]
    assert not ours, "\n".join(ours)
    # the stubs are in effect: the wrong calls of the control file are caught
    assert any("create_network" in e or "arg-type" in e for e in errors), proc.stdout
    assert any("NOT_A_FLAG" in e for e in errors), proc.stdout
