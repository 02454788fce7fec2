"""Start and stop a real NVIDIA Triton Inference Server on this machine, for tests and the demo.

The ``nvidia-pytriton`` wheel bundles the ``tritonserver`` binary (server 2.51) with its Python
backend; nothing else of PyTriton is used. Its Python dependencies pin numpy < 2, so it is not
installed into the project's environment: ``python -m pfpn.runtime.triton_server --install`` (what
``make test`` runs) unpacks it without dependencies into ``.triton/`` in the checkout
(``PFPN_TRITON_SITE`` overrides), the way the reference implementation lives in ``.mmref/``.

    from pfpn.runtime.triton_server import TritonServer
    with TritonServer("model_repository") as server:      # 127.0.0.1, free ports, waits until ready
        server.http_url, server.grpc_url, server.metrics_url

What the bundled binary needs, found when it was first tried here:

* a backend directory holding ``python/libtriton_python.so`` and the Python backend stub built for
  *this* interpreter's minor version (``python_backend_stubs/3.X``), copied next to it;
* the running interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (else the stub loads the
  system's ``libpython3.X``), then the wheel's ``nvidia_pytriton.libs`` (the copied stub no longer
  finds them through its relative RPATH), and the interpreter's own directory first on ``PATH`` (the stub
  imports packages from the first ``python`` on ``PATH``, not from ``PYTHONPATH``);
* every endpoint bound to ``127.0.0.1`` (its default is all interfaces);
* numpy 1.x in the models' interpreter (``STUB_PACKAGES``, the virtual environment ``--install``
  makes in ``.triton/venv``): the stub garbles tensors under numpy 2.

Torch-free.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTRITON = "nvidia-pytriton==0.7.0"  # tritonserver 2.51 with the Python backend
# The Python backend stub of that wheel reads and writes tensors through numpy 1.x's ABI: with
# numpy 2 every tensor crossing it comes out empty or garbled (measured: a 5-element int64 output
# "does not match size", uint8 inputs all 255). Its models therefore run in their own virtual
# environment, SITE/venv, with the runtime's dependencies at numpy 1.x and this checkout installed
# editable (``pip install --no-deps -e``: the import root ``pfpn`` is a mapping of the checkout's
# folders, so a path entry would not do).
STUB_PACKAGES = ("numpy==1.26.4", "onnxruntime==1.32.0", "opencv-python-headless==4.10.0.84")
CHECKOUT_INSTALL = "pfpn: editable install of the checkout"  # recorded in the install stamp


class TritonUnavailable(RuntimeError):
    """The bundled tritonserver is not installed here (the message says how to install it)."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path  # .../pytriton/tritonserver/bin/tritonserver
    python_backend: Path  # .../pytriton/tritonserver/backends/python
    stub: Path  # the Python backend stub for this interpreter
    stub_python: Path  # the interpreter of the models (SITE/venv/bin/python)
    libs: Path  # the wheel's bundled shared libraries (the copied stub finds them through LD_LIBRARY_PATH)


def site_dir() -> Path:
    """Where ``--install`` puts the wheel (``PFPN_TRITON_SITE`` or ``.triton/`` in the checkout)."""
    return Path(os.environ.get("PFPN_TRITON_SITE", ROOT / ".triton"))


def find_triton(site: Path | None = None) -> TritonInstall:
    """The bundled server under ``site`` (default :func:`site_dir`), else in this environment's
    ``pytriton`` package -> TritonInstall; TritonUnavailable names what is missing."""
    roots = [site or site_dir()]
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is not None and spec.submodule_search_locations:
            roots.append(Path(list(spec.submodule_search_locations)[0]).parent)
    except (ImportError, ValueError):
        pass
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for root in roots:
        base = root / "pytriton" / "tritonserver"
        binary, backend = base / "bin" / "tritonserver", base / "backends" / "python"
        stub = base / "python_backend_stubs" / version / "triton_python_backend_stub"
        if binary.is_file() and (backend / "libtriton_python.so").is_file():
            if not stub.is_file():
                raise TritonUnavailable(f"{base} has no Python backend stub for Python {version}")
            python = root / "venv" / "bin" / "python"
            if not python.is_file():
                raise TritonUnavailable(f"{root} has no models' environment ({python}): run "
                                        "`python -m pfpn.runtime.triton_server --install`")
            return TritonInstall(binary, backend, stub, python, root / "nvidia_pytriton.libs")
    raise TritonUnavailable(f"the bundled tritonserver was not found in {', '.join(map(str, roots))}: run "
                            f"`python -m pfpn.runtime.triton_server --install` (or `make test`), which puts {PYTRITON} "
                            f"into {site_dir()} without its dependencies")


def install_triton(site: Path | None = None, *, quiet: bool = True) -> TritonInstall:
    """``pip install --no-deps --target SITE nvidia-pytriton`` and the models' virtual environment
    SITE/venv (``STUB_PACKAGES``, this checkout installed editable), unless already there -> TritonInstall."""
    site = site or site_dir()
    stamp = site / ".installed"
    wanted = "\n".join((PYTRITON, *STUB_PACKAGES, CHECKOUT_INSTALL)) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return find_triton(site)
    if site.exists():
        shutil.rmtree(site)
    pip = ["-m", "pip", "install", "--disable-pip-version-check"] + (["--quiet"] if quiet else [])
    venv = site / "venv"
    steps = [[sys.executable, *pip, "--no-deps", "--target", str(site), PYTRITON],
             [sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), *pip, *STUB_PACKAGES],
             [str(venv / "bin" / "python"), *pip, "--no-deps", "-e", str(ROOT)]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise TritonUnavailable(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    stamp.write_text(wanted)
    return find_triton(site)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_environment(install: TritonInstall, stub_python: str | os.PathLike | None = None) -> dict[str, str]:
    """The environment the server and its Python stubs need (module docstring); ``stub_python``:
    the interpreter whose packages the models import (default: this one)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p)
    python_dir = Path(stub_python).parent if stub_python else Path(sys.executable).parent
    env["PATH"] = os.pathsep.join((str(python_dir), env.get("PATH", "")))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class TritonServer:
    """One tritonserver process serving ``model_repository`` on 127.0.0.1.

    Args:
        model_repository: the folder written by runtime/triton_repo.py (or any Triton repository).
        ready_timeout: seconds to wait for ``/v2/health/ready``.
        log_path: the server's stdout + stderr (default: a file in a temporary folder).
        extra_args: more ``tritonserver`` flags.
    """

    def __init__(self, model_repository: str | os.PathLike, *, ready_timeout: float = 120.0,
                 log_path: str | os.PathLike | None = None, extra_args: tuple[str, ...] = (),
                 install: TritonInstall | None = None, stub_python: str | os.PathLike | None = None) -> None:
        self.model_repository = Path(model_repository)
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.model_repository}")
        self.install = install or find_triton()
        self.ready_timeout = ready_timeout
        self.extra_args = tuple(extra_args)
        self._work = Path(tempfile.mkdtemp(prefix="pfpn-triton-"))
        self.log_path = Path(log_path) if log_path else self._work / "tritonserver.log"
        self.stub_python = stub_python or self.install.stub_python
        self.process: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0

    # ------------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _backend_directory(self) -> Path:
        backends = self._work / "backends"
        python = backends / "python"
        if not python.is_dir():
            shutil.copytree(self.install.python_backend, python)
            shutil.copy2(self.install.stub, python / "triton_python_backend_stub")
        return backends

    def start(self) -> "TritonServer":
        """Launch the server and wait until it is ready; RuntimeError with the log's tail if it
        exits or does not get ready in time."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is already running")
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        cmd = [str(self.install.binary), f"--model-repository={self.model_repository.resolve()}",
               f"--backend-directory={self._backend_directory()}", "--http-address=127.0.0.1",
               f"--http-port={self.http_port}", "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
               "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}", "--allow-metrics=true",
               "--log-verbose=0", *self.extra_args]
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=server_environment(self.install, self.stub_python),
                                            start_new_session=True)
        finally:
            log.close()
        self.wait_ready()
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"tritonserver was not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server's whole process group (the server and its Python stubs), no cleanup."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the server drains and unloads its models), SIGKILL after ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--install", action="store_true", help=f"install {PYTRITON} into {site_dir()} (no dependencies)")
    p.add_argument("--serve", metavar="REPO", help="serve this model repository until interrupted")
    args = p.parse_args(argv)
    try:
        install = install_triton(quiet=False) if args.install else find_triton()
    except TritonUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"tritonserver: {install.binary}")
    if args.serve:
        with TritonServer(args.serve, install=install) as server:
            print(f"ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url} "
                  f"(log {server.log_path}); Ctrl-C stops it", flush=True)
            try:
                while server.process is not None and server.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
