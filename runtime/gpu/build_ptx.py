"""Compile the GPU post-processing kernels (runtime/gpu/kernels.py) ahead of time to PTX with
Triton, without a GPU: ``python -m runtime.gpu.build_ptx [--arch 87 90] [--out-dir DIR]``.

Writes ``<kernel>_sm<XX>.ptx`` per kernel and target and ``manifest.json`` describing, for the
torch-free, Triton-free launcher (runtime/gpu/launcher.py): the PTX entry name, num_warps
(block = 32 * num_warps threads), dynamic shared memory, the constexprs baked in, and the full
PTX parameter order: the kernel's own arguments followed by the implicit parameters Triton 3.x
appends to every kernel (``global_scratch``, ``profile_scratch``: global pointers, with the
per-program scratch size the launcher must provide, 0 = pass NULL).

Compilation options: ``enable_fp_fusion=False`` (no implicit mul+add contraction: every f32
add/sub/mul is emitted with an explicit ``.rn``, which ptxas and the driver JIT never fuse; the
kernels place their fmas explicitly to reproduce the reference's float32 arithmetic),
``enable_reflect_ftz=False`` (IEEE subnormals in floor/ceil), PTX ISA
``--ptx-version`` (default 8.0, JIT-able by CUDA 12.0+ drivers such as JetPack 6 on Jetson Orin;
sm_87 needs >= 7.4, sm_90 >= 7.8). Triton targets Hopper as ``sm_90a``; the kernels use no
arch-specific instructions, so the PTX is retargeted to plain ``sm_90`` (forward-compatible;
``ptxas -arch=sm_90`` accepts it, checked by the tests). Debug line info (``.file``/``.loc``,
which embeds local paths) is stripped so the output does not depend on the checkout location.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.gpu.launcher import MANIFEST_NAME, PTX_DIR  # noqa: E402
from runtime.gpu.postprocess import KERNEL_SPECS, KernelSpec  # noqa: E402

DEFAULT_ARCHS = (87, 90)
DEFAULT_PTX_VERSION = 80
KERNELS_SOURCE = Path(__file__).resolve().parent / "kernels.py"

# Triton signature type -> PTX .param type
PTX_PARAM_TYPES = {"i32": ".u32", "i64": ".u64", "fp32": ".f32", "fp64": ".f64", "i1": ".u8"}
# Triton 3.x appends these to every kernel's parameters (see triton/backends/nvidia/driver.c:
# "+ 2 for global & profile scratch")
IMPLICIT_PARAMS = (("global_scratch", "global_scratch_size", "global_scratch_align"),
                   ("profile_scratch", "profile_scratch_size", "profile_scratch_align"))


def source_sha256() -> str:
    return hashlib.sha256(KERNELS_SOURCE.read_bytes()).hexdigest()


def specs_sha256() -> str:
    text = json.dumps([[s.name, list(map(list, s.params)), s.constexprs, s.num_warps] for s in KERNEL_SPECS],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_params(ptx: str, entry: str) -> list[str]:
    """The .param declarations of a PTX .entry, as '<type>' strings ('.u64 .ptr ...' -> '.u64')."""
    m = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\((.*?)\)", ptx, re.S)
    if not m:
        raise ValueError(f"entry {entry} not found in the PTX")
    out = []
    for decl in m.group(1).split(","):
        decl = decl.strip()
        if decl:
            tokens = decl.split()
            assert tokens[0] == ".param", decl
            out.append(tokens[1])
    return out


def clean_ptx(ptx: str, arch: int) -> str:
    """Retarget sm_XXa -> sm_XX and strip debug line info (paths of this checkout)."""
    ptx = re.sub(r"^(\s*\.target\s+sm_\d+)a\b", r"\1", ptx, flags=re.M)
    ptx = re.sub(r"^\s*\.file\s+\d+\s+\".*\".*\n", "", ptx, flags=re.M)
    ptx = re.sub(r"^\s*\.loc\s+.*\n", "", ptx, flags=re.M)
    ptx = re.sub(r"\n\s*\.section\s+\.debug_\w+\s*\{.*?\n\s*\}", "", ptx, flags=re.S)
    if f".target sm_{arch}\n" not in ptx and not re.search(rf"\.target sm_{arch}\b", ptx):
        raise ValueError(f"unexpected PTX target (wanted sm_{arch})")
    return ptx


def compile_kernel(spec: KernelSpec, arch: int, ptx_version: int = DEFAULT_PTX_VERSION) -> tuple[str, dict]:
    """-> (PTX text, manifest entry) for one kernel and target. Needs triton, no GPU."""
    import triton
    from triton.backends.compiler import GPUTarget

    from runtime.gpu import kernels

    fn = getattr(kernels, spec.name)
    signature = {name: ty for name, ty in spec.params}
    for name in spec.constexprs:
        signature[name] = "constexpr"
    missing = [a for a in fn.arg_names if a not in signature]
    extra = [a for a in signature if a not in fn.arg_names]
    if missing or extra:
        raise ValueError(f"{spec.name}: spec and kernel arguments differ (missing {missing}, unknown {extra})")
    if [a for a in fn.arg_names if a not in spec.constexprs] != [p for p, _ in spec.params]:
        raise ValueError(f"{spec.name}: spec parameter order differs from the kernel's")
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=dict(spec.constexprs))
    options = {"num_warps": spec.num_warps, "num_stages": 1, "enable_fp_fusion": False, "enable_reflect_ftz": False,
               "ptx_version": ptx_version}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    md = compiled.metadata
    ptx = clean_ptx(compiled.asm["ptx"], arch)
    entry = md.name
    ptx_types = entry_params(ptx, entry)
    expected = [".u64" if ty.startswith("*") else PTX_PARAM_TYPES[ty] for _, ty in spec.params]
    implicit = []
    for pname, size_key, align_key in IMPLICIT_PARAMS:
        implicit.append({"name": pname, "type": "*i8", "size": int(getattr(md, size_key, 0) or 0),
                         "align": int(getattr(md, align_key, 1) or 1)})
        expected.append(".u64")
    if ptx_types != expected:
        raise ValueError(f"{spec.name} sm_{arch}: PTX parameters {ptx_types} differ from the expected {expected} "
                         "(Triton's implicit parameters changed?)")
    params = [{"name": n, "type": t} for n, t in spec.params] + [{"name": p["name"], "type": p["type"]} for p in implicit]
    file = f"{spec.name}_sm{arch}.ptx"
    info = {
        "name": spec.name,
        "entry": entry,
        "file": file,
        "target": arch,
        "num_warps": int(md.num_warps),
        "num_ctas": int(md.num_ctas),
        "num_stages": int(md.num_stages),
        "shared": int(md.shared),
        "constexprs": dict(spec.constexprs),
        "signature": {n: t for n, t in spec.params},
        "params": params,
        "implicit_params": implicit,
        "enable_fp_fusion": False,
        "ptx_sha256": hashlib.sha256(ptx.encode()).hexdigest(),
        "ptx_bytes": len(ptx.encode()),
    }
    return ptx, info


def build(archs=DEFAULT_ARCHS, out_dir: Path | str = PTX_DIR, ptx_version: int = DEFAULT_PTX_VERSION,
          verbose: bool = True) -> dict:
    import triton

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for arch in archs:
        for spec in KERNEL_SPECS:
            ptx, info = compile_kernel(spec, int(arch), ptx_version)
            (out_dir / info["file"]).write_text(ptx)
            entries.append(info)
            if verbose:
                print(f"{info['file']}: {info['ptx_bytes']} bytes, {info['num_warps']} warps, "
                      f"shared {info['shared']} B, scratch {[p['size'] for p in info['implicit_params']]}")
    manifest = {
        "format": 1,
        "triton_version": triton.__version__,
        "ptx_version": f"{ptx_version // 10}.{ptx_version % 10}",
        "targets": [int(a) for a in archs],
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
                        help="compute capabilities to build, e.g. 87 (Jetson Orin) 90 (H100); default: 87 90")
    parser.add_argument("--out-dir", default=str(PTX_DIR), help=f"output folder (default {PTX_DIR})")
    parser.add_argument("--ptx-version", type=int, default=DEFAULT_PTX_VERSION,
                        help="PTX ISA version x10 (default 80 = 8.0, JIT-able by CUDA 12.0+ drivers)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    build(args.arch, args.out_dir, args.ptx_version, verbose=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
