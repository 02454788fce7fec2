"""Compile the GPU post-processing kernels (runtime/gpu/kernels.py) ahead of time to PTX with
Triton, without a GPU: ``python -m pfpn.runtime.gpu.build_ptx [--arch 75] [--out-dir DIR]``.

Writes ``<kernel>_sm<XX>.ptx`` per kernel and target and ``manifest.json`` describing, for the
torch-free, Triton-free launcher (runtime/gpu/launcher.py): the PTX entry name, num_warps
(block = 32 * num_warps threads), dynamic shared memory, the constexprs baked in, and the full
PTX parameter order: the kernel's own arguments followed by the hidden parameters Triton 3.x
appends to every kernel (``global_scratch``, ``profile_scratch``: global pointers, with the
per-program scratch size the launcher must provide, 0 = pass NULL).

One lowest-target build serves every GPU: PTX for ``sm_75`` at PTX ISA 8.0, which the driver
JIT-compiles forward to the device it runs on (sm_75 .. sm_120, every GPU TensorRT 10 supports).
The tests prove it by assembling the committed PTX with ``ptxas`` for each of those targets
(runtime/gpu/triton_aot.TENSORRT10_TARGETS). The kernels use nothing newer than sm_75 offers
(no tensor cores, no TMA), so a per-target build would buy nothing. Compilation options (no
fp contraction, IEEE subnormals, ISA per target, plain targets): runtime/gpu/triton_aot.py, the
compiler the TensorRT plugin kernels use too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from pfpn.runtime.gpu.device_fusion import KERNEL_SPECS, KernelSpec
from pfpn.runtime.gpu.launcher import MANIFEST_NAME, PTX_DIR
from pfpn.runtime.gpu.triton_aot import TENSORRT10_TARGETS, compile_ptx, ptx_isa_for

DEFAULT_ARCHS = (75,)
KERNELS_SOURCE = Path(__file__).resolve().parent / "kernels.py"


def source_sha256() -> str:
    return hashlib.sha256(KERNELS_SOURCE.read_bytes()).hexdigest()


def specs_sha256() -> str:
    text = json.dumps([[s.name, list(map(list, s.params)), s.constexprs, s.num_warps] for s in KERNEL_SPECS],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def compile_spec(spec: KernelSpec, arch: int, ptx_isa: int | None = None) -> tuple[str, dict]:
    """-> (PTX text, manifest entry) for one kernel and target. Needs triton, no GPU."""
    from pfpn.runtime.gpu import kernels

    kernel = compile_ptx(getattr(kernels, spec.name), signature=dict(spec.params), constexprs=dict(spec.constexprs),
                         arch=arch, num_warps=spec.num_warps, ptx_isa=ptx_isa, hidden_params="keep")
    params = [{"name": n, "type": t} for n, t in spec.params] + [{"name": h["name"], "type": h["type"]}
                                                                 for h in kernel.hidden]
    info = {
        "name": spec.name,
        "entry": kernel.entry,
        "file": f"{spec.name}_sm{arch}.ptx",
        "target": arch,
        "num_warps": kernel.num_warps,
        "shared": kernel.shared,
        "constexprs": dict(spec.constexprs),
        "signature": {n: t for n, t in spec.params},
        "params": params,
        "implicit_params": [dict(h) for h in kernel.hidden],
        "ptx_isa": kernel.ptx_isa,
        "enable_fp_fusion": False,
        "ptx_sha256": hashlib.sha256(kernel.ptx.encode()).hexdigest(),
        "ptx_bytes": len(kernel.ptx.encode()),
    }
    return kernel.ptx, info


def build_ptx(*, archs: tuple[int, ...] = DEFAULT_ARCHS, out_dir: Path | str = PTX_DIR, ptx_isa: int | None = None,
              verbose: bool = True) -> dict:
    """Compile every kernel for each of ``archs``, write the PTX files and the manifest into
    ``out_dir`` (a previous build's PTX removed) -> the manifest."""
    import triton

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*_sm*.ptx"):  # a previous build's targets
        old.unlink()
    entries = []
    for arch in archs:
        for spec in KERNEL_SPECS:
            ptx, info = compile_spec(spec, int(arch), ptx_isa)
            (out_dir / info["file"]).write_text(ptx)
            entries.append(info)
            if verbose:
                print(f"{info['file']}: {info['ptx_bytes']} bytes, {info['num_warps']} warps, "
                      f"shared {info['shared']} B, scratch {[p['size'] for p in info['implicit_params']]}")
    manifest = {
        "format": 1,
        "triton_version": triton.__version__,
        "ptx_isa": {str(a): f"{ptx_isa_for(int(a), ptx_isa) // 10}.{ptx_isa_for(int(a), ptx_isa) % 10}"
                    for a in archs},
        "targets": [int(a) for a in archs],
        # what the driver JIT-compiles this PTX for (each assembled by ptxas in the tests)
        "runs_on": [t for t in TENSORRT10_TARGETS if t >= min(int(a) for a in archs)],
        "kernels_source_sha256": source_sha256(),
        "kernel_specs_sha256": specs_sha256(),
        "kernels": entries,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if verbose:
        print(f"wrote {len(entries)} PTX files and {out_dir / MANIFEST_NAME}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS),
                        help="compute capabilities to build (default 75: one PTX that every GPU from Turing on "
                             "JIT-compiles)")
    parser.add_argument("--out-dir", default=str(PTX_DIR), help=f"output folder (default {PTX_DIR})")
    parser.add_argument("--ptx-isa", type=int, default=None,
                        help="PTX ISA version x10 (default: 80 = 8.0, JIT-able by CUDA 12.0+ drivers, raised to "
                             "the target's minimum)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    build_ptx(archs=tuple(args.arch), out_dir=args.out_dir, ptx_isa=args.ptx_isa, verbose=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
