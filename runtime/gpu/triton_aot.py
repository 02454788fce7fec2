"""The one Triton-to-PTX compiler of the project, used by both kernel sets:

* the post-processing kernels (``runtime/gpu/kernels.py``), compiled once by
  ``runtime/gpu/build_ptx.py`` into the committed ``runtime/gpu/ptx`` and launched by
  ``runtime/gpu/launcher.py`` with Triton's hidden parameters kept (``hidden_params="keep"``);
* the TensorRT plugin kernels (``plugins/triton_kernels.py``), compiled at engine-build time for
  the build GPU and embedded in the engine, where TensorRT passes exactly the plugin's own
  arguments (``hidden_params="strip"``).

No GPU is needed (``triton.compile`` with an explicit ``GPUTarget``). Triton is imported only by
:func:`compile_ptx`; the PTX text helpers below are plain string functions that the torch-free,
Triton-free runtime and the tests use.

Compilation options, the same for every kernel:

* ``enable_fp_fusion=False``: no implicit mul+add contraction. Every f32 add/sub/mul is emitted
  with ``.rn``, which neither ptxas nor the driver JIT fuse, so kernels place their FMAs explicitly
  and reproduce the numpy references' float32 arithmetic.
* ``enable_reflect_ftz=False``: libdevice keeps IEEE subnormals (numpy does), no flush-to-zero.
* ``num_stages=1``: no software pipelining (none of these kernels has a loop worth it).
* PTX ISA: ``max(requested, minimum for the target)``, default request 8.0. PTX ISA 8.0 is what
  CUDA 12.0 drivers JIT (the oldest driver that cuda-python 12 supports; JetPack 6 on Orin is
  CUDA 12.2). Targets newer than that ISA need more: sm_100 needs 8.6 and sm_120 needs 8.7 (NVIDIA
  "PTX ISA" 8.7 manual, section "PTX ISA Version" / target table: sm_100 added in PTX ISA 8.6 with
  CUDA 12.7, sm_120 in 8.7 with CUDA 12.8), so their PTX needs an R570+ driver, which every
  Blackwell GPU has anyway. LLVM aborts the process (not an exception) when asked for a lower
  ISA, so the minimum is applied before calling Triton.
* Arch-specific targets: Triton emits ``.target sm_90a`` / ``sm_100a`` / ``sm_120a``.
  Arch-specific PTX runs only on exactly that GPU and is never JIT-compiled forward; these kernels
  use no arch-specific instruction, so the target is rewritten to the plain ``sm_XX`` (ptxas
  rejects the PTX if that is ever wrong; the tests assemble every target).
* Debug line info (``.file`` / ``.loc``, which embed local paths) is stripped: the output does
  not depend on the checkout location.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

# The GPUs TensorRT 10.x supports (TensorRT 10 support matrix: Turing sm_75 .. Blackwell sm_120;
# sm_87 = Jetson Orin, sm_89 = Ada, sm_100 = B100/B200, sm_120 = RTX 50 / RTX PRO Blackwell).
TENSORRT10_TARGETS = (75, 80, 86, 87, 89, 90, 100, 120)
# Lowest PTX ISA version that knows each target, x10 (PTX ISA manual, "Release Notes" table of
# target architectures: sm_75 6.3, sm_80 7.0, sm_86 7.1, sm_87 7.4, sm_89 / sm_90 7.8,
# sm_100 8.6, sm_120 8.7).
MIN_PTX_ISA = {75: 63, 80: 70, 86: 71, 87: 74, 89: 78, 90: 78, 100: 86, 120: 87}
DEFAULT_PTX_ISA = 80

# Triton 3.x appends two global pointers to every kernel's parameters (triton/backends/nvidia/
# driver.c: "+ 2 for global & profile scratch"); their per-program sizes are in the metadata.
HIDDEN_PARAMS = (("global_scratch", "global_scratch_size", "global_scratch_align"),
                 ("profile_scratch", "profile_scratch_size", "profile_scratch_align"))
# Triton signature type -> PTX .param type
PTX_PARAM_TYPES = {"i1": ".u8", "i8": ".u8", "i16": ".u16", "i32": ".u32", "i64": ".u64", "u32": ".u32",
                   "u64": ".u64", "fp32": ".f32", "fp64": ".f64"}


class PtxError(ValueError):
    """A kernel cannot be compiled as asked (target, ISA, parameters)."""


def ptx_isa_for(arch: int, requested: int | None = None) -> int:
    """The PTX ISA version (x10) to emit for ``arch``: the request (default 8.0) raised to the
    target's minimum. An explicit request below the minimum is refused."""
    if arch not in MIN_PTX_ISA:
        known = ", ".join(f"sm_{a}" for a in sorted(MIN_PTX_ISA))
        raise PtxError(f"sm_{arch} is not a target this project builds for ({known})")
    minimum = MIN_PTX_ISA[arch]
    if requested is None:
        return max(DEFAULT_PTX_ISA, minimum)
    if requested < minimum:
        raise PtxError(f"sm_{arch} needs PTX ISA >= {minimum // 10}.{minimum % 10}, asked for "
                       f"{requested // 10}.{requested % 10}")
    return requested


def nearest_target(sm: int, targets: Sequence[int] = TENSORRT10_TARGETS) -> int:
    """The highest of ``targets`` that a GPU of compute capability ``sm`` (e.g. 103) can
    JIT-compile PTX for (PTX runs on its own and every later architecture)."""
    usable = [t for t in targets if t <= sm]
    if not usable:
        raise PtxError(f"compute capability {sm // 10}.{sm % 10} is older than every target this project builds "
                       f"for (lowest: sm_{TENSORRT10_TARGETS[0]}, Turing, the oldest GPU TensorRT 10 supports)")
    return max(usable)


@dataclass(frozen=True)
class PtxKernel:
    """One kernel compiled for one target."""

    entry: str  # the PTX .entry name
    ptx: str
    arch: int  # e.g. 90
    target: str  # the PTX .target after retargeting, e.g. "sm_90"
    ptx_isa: str  # the PTX .version, e.g. "8.0"
    num_warps: int  # block = 32 * num_warps threads
    shared: int  # dynamic shared memory bytes to pass at launch
    param_types: tuple[str, ...]  # PTX .param types of the entry, in order
    hidden: tuple[dict, ...]  # kept hidden parameters: {"name", "type", "size", "align"}; () when stripped


def compile_ptx(fn: Callable[..., Any], *, signature: Mapping[str, str], constexprs: Mapping[str, Any], arch: int,
                num_warps: int, ptx_isa: int | None = None,
                hidden_params: Literal["keep", "strip"] = "keep") -> PtxKernel:
    """Compile the Triton kernel ``fn`` (a plain function or a ``triton.jit`` one) for ``sm_{arch}``.

    signature: the non-constexpr arguments in the kernel's order -> Triton types ("*fp32", "i32");
    constexprs: the constexpr arguments' values. ``hidden_params="strip"`` removes Triton's hidden
    scratch parameters (refusing if the kernel needs scratch memory or reads them), for callers that
    pass exactly the listed arguments (TensorRT AOT plugins).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    isa = ptx_isa_for(arch, ptx_isa)
    jit = fn if isinstance(fn, JITFunction) else JITFunction(fn)
    order = [a for a in jit.arg_names if a not in constexprs]
    if order != list(signature):
        raise PtxError(f"{jit.__name__}: signature {list(signature)} does not list the kernel's non-constexpr "
                       f"arguments {order} in order")
    unknown = [k for k in constexprs if k not in jit.arg_names]
    if unknown:
        raise PtxError(f"{jit.__name__}: constexprs {unknown} are not arguments of the kernel")
    full = dict(signature)
    full.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn=jit, signature=full, constexprs=dict(constexprs))
    options = {"num_warps": int(num_warps), "num_stages": 1, "enable_fp_fusion": False,
               "enable_reflect_ftz": False, "ptx_version": isa}
    compiled = triton.compile(src, target=GPUTarget("cuda", int(arch), 32), options=options)
    md = compiled.metadata
    entry = md.name
    ptx = strip_line_info(retarget_plain(compiled.asm["ptx"], arch))
    hidden = [{"name": name, "type": "*i8", "size": int(getattr(md, size_key, 0) or 0),
               "align": int(getattr(md, align_key, 1) or 1)} for name, size_key, align_key in HIDDEN_PARAMS]
    expected = [".u64" if t.startswith("*") else PTX_PARAM_TYPES[t] for t in signature.values()]
    types = entry_param_types(ptx, entry)
    if types != expected + [".u64"] * len(hidden):
        raise PtxError(f"{entry} sm_{arch}: PTX parameters {types} differ from the expected "
                       f"{expected} + {len(hidden)} hidden (Triton's hidden parameters changed?)")
    if hidden_params == "strip":
        needs = [h for h in hidden if h["size"]]
        if needs:
            raise PtxError(f"{entry}: Triton asks for scratch memory ({needs}), which the caller cannot provide")
        ptx = strip_hidden_params(ptx, entry, len(signature))
        types = entry_param_types(ptx, entry)
        hidden = []
    return PtxKernel(entry=entry, ptx=ptx, arch=int(arch), target=ptx_target(ptx), ptx_isa=ptx_isa_version(ptx),
                     num_warps=int(md.num_warps), shared=int(md.shared), param_types=tuple(types),
                     hidden=tuple(hidden))


# ----------------------------------------------------------------------------------------------
# PTX text (no Triton)

_ENTRY = re.compile(r"\.entry\s+(?P<name>[A-Za-z_$][\w$]*)\s*\((?P<params>[^)]*)\)", re.S)


def _entry_decls(ptx: str, entry: str) -> tuple[re.Match, list[str]]:
    for m in _ENTRY.finditer(ptx):
        if m.group("name") == entry:
            return m, [p.strip() for p in m.group("params").split(",") if p.strip()]
    raise PtxError(f"no .entry {entry} in the PTX")


def entry_param_names(ptx: str, entry: str) -> list[str]:
    """Parameter names of a PTX entry, in order."""
    return [d.split()[-1] for d in _entry_decls(ptx, entry)[1]]


def entry_param_types(ptx: str, entry: str) -> list[str]:
    """Parameter types of a PTX entry, in order ('.param .u64 .ptr .global .align 1 x' -> '.u64')."""
    out = []
    for decl in _entry_decls(ptx, entry)[1]:
        tokens = decl.split()
        if tokens[0] != ".param":
            raise PtxError(f"{entry}: unexpected parameter declaration {decl!r}")
        out.append(tokens[1])
    return out


def strip_hidden_params(ptx: str, entry: str, num_visible: int) -> str:
    """Remove the parameters after the first ``num_visible``; refuses if the body reads them."""
    m, params = _entry_decls(ptx, entry)
    if len(params) < num_visible:
        raise PtxError(f"{entry} has {len(params)} parameters, fewer than the {num_visible} expected")
    hidden = [p.split()[-1] for p in params[num_visible:]]
    body = ptx[m.end():]
    used = [h for h in hidden if re.search(rf"\[{re.escape(h)}\]", body)]
    if used:
        raise PtxError(f"{entry}: hidden parameters {used} are used by the kernel; cannot drop them")
    return ptx[:m.start("params")] + ",\n".join(params[:num_visible]) + "\n" + ptx[m.end("params"):]


def retarget_plain(ptx: str, arch: int) -> str:
    """``.target sm_XXa`` -> ``.target sm_XX`` (checks that the PTX is for ``arch``)."""
    ptx = re.sub(r"^(\s*\.target\s+sm_\d+)[af]\b", r"\1", ptx, flags=re.M)
    if ptx_target(ptx) != f"sm_{arch}":
        raise PtxError(f"unexpected PTX target {ptx_target(ptx)!r} (wanted sm_{arch})")
    return ptx


def strip_line_info(ptx: str) -> str:
    """Drop ``.file`` / ``.loc`` directives and DWARF sections (source paths; no effect on the code)."""
    ptx = re.sub(r"^[ \t]*\.file[ \t]+\d+[ \t]+\".*$\n?", "", ptx, flags=re.M)
    ptx = re.sub(r"^[ \t]*\.loc[ \t].*$\n?", "", ptx, flags=re.M)
    return re.sub(r"\n\s*\.section\s+\.debug_\w+\s*\{.*?\n\s*\}", "", ptx, flags=re.S)


def ptx_target(ptx: str) -> str:
    m = re.search(r"^\s*\.target\s+([^\s,]+)", ptx, re.M)
    return m.group(1) if m else ""


def ptx_isa_version(ptx: str) -> str:
    m = re.search(r"^\s*\.version\s+(\S+)", ptx, re.M)
    return m.group(1) if m else ""


# ----------------------------------------------------------------------------------------------
# ptxas (the proof that a PTX file assembles for a target, without a GPU)

def find_ptxas() -> str | None:
    """Triton's bundled ptxas (a dev dependency, so every test machine has it), else $PTXAS, else
    the one on PATH."""
    try:
        import triton

        bundled = Path(triton.__file__).resolve().parent / "backends" / "nvidia" / "bin" / "ptxas"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    return os.environ.get("PTXAS") or shutil.which("ptxas")


@dataclass(frozen=True)
class Assembly:
    target: int
    returncode: int
    registers: int | None
    spill_bytes: int | None
    log: str


def assemble(ptx_path: str | os.PathLike, target: int, cubin_path: str | os.PathLike, *,
             ptxas: str | None = None) -> Assembly:
    """``ptxas -arch=sm_{target}`` on a PTX file (raises PtxError when no ptxas exists)."""
    exe = ptxas or find_ptxas()
    if exe is None:
        raise PtxError("no ptxas found (install triton, or set $PTXAS)")
    proc = subprocess.run([exe, f"-arch=sm_{target}", "-v", str(ptx_path), "-o", str(cubin_path)],
                          capture_output=True, text=True, timeout=300)
    regs = re.search(r"Used (\d+) registers", proc.stderr)
    spills = re.search(r"(\d+) bytes spill stores", proc.stderr)
    return Assembly(target=target, returncode=proc.returncode, registers=int(regs.group(1)) if regs else None,
                    spill_bytes=int(spills.group(1)) if spills else None, log=proc.stderr[-3000:])
