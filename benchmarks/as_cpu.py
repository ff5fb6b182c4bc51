"""Run a command with the code it runs made for another kind of x86 CPU than this one.

    python benchmarks/as_cpu.py avx2 python benchmarks/bench_conv.py --rounds 2

`avx2`: as on a CPU without AVX-512 (16 vector registers of 256 bits: AMD Zen 2 and 3, Intel
before Skylake-SP). OpenBLAS takes its Haswell kernels (OPENBLAS_CORETYPE; its choice on Zen too),
NumPy its AVX2 loops (NPY_DISABLE_CPU_FEATURES: its AVX-512 targets), and numba compiles with
this CPU's AVX-512 features turned off, tuned for Zen 3 (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES),
into a cache of its own (NUMBA_CACHE_DIR). PyTorch, where installed (bench_conv's comparison), takes
its AVX2 kernels too: ATen's (ATEN_CPU_CAPABILITY), oneDNN's (ONEDNN_MAX_CPU_ISA) and MKL's
(MKL_ENABLE_INSTRUCTIONS). A kernel that vectorizes with AVX-512 only, or a way
whose register blocking spills with 16 registers, shows here; another CPU's caches, clock and
memory do not (this machine's stay). hpexp's measured choices are cached per BLAS kernel
(hpexp.train.timings), so these runs choose their ways for themselves, not by this machine's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from numpy.lib.introspect import opt_func_info

CPUS = {"avx2": ("Haswell", "znver3")}  # name: (OpenBLAS core, LLVM CPU)
TORCH = {  # name: PyTorch's switches (ATen, oneDNN, MKL)
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
}
DROPPED = ("avx512", "avx10", "amx", "evex512")  # features the emulated CPUs lack


def features_without(dropped: tuple[str, ...]) -> str:
    """This CPU's features as LLVM names them (+name, -name), those starting with `dropped` off."""
    import llvmlite.binding as llvm  # numba's, with the `fast` extra

    names = llvm.get_host_cpu_features().flatten().split(",")
    return ",".join(f"-{f[1:]}" if f[1:].startswith(dropped) else f for f in names if f)


def numpy_targets_past_avx2() -> list[str]:
    """The targets NumPy's loops were built for beyond AVX2 (X86_V4, AVX512_*), as it names them."""
    targets = {
        name
        for dtypes in opt_func_info().values()
        for loops in dtypes.values()
        for name in loops["available"].split()
    }
    return sorted(t for t in targets if t == "X86_V4" or t.startswith("AVX512"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cpu", choices=sorted(CPUS))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    args = parser.parse_args()
    if not args.command:
        parser.error("give the command to run, for example: python benchmarks/bench_conv.py")
    blas_core, llvm_cpu = CPUS[args.cpu]
    cache = Path(tempfile.gettempdir()) / f"hpexp-numba-{args.cpu}"
    os.environ |= {
        "OPENBLAS_CORETYPE": blas_core,
        "NPY_DISABLE_CPU_FEATURES": " ".join(numpy_targets_past_avx2()),
        **TORCH[args.cpu],
    }
    try:
        features = features_without(DROPPED)
    except ImportError:  # no numba: nothing compiled to emulate
        pass
    else:
        os.environ |= {"NUMBA_CPU_NAME": llvm_cpu, "NUMBA_CPU_FEATURES": features}
        os.environ["NUMBA_CACHE_DIR"] = str(cache)
    without = f"OpenBLAS {blas_core}; NumPy, numba ({llvm_cpu}), PyTorch without AVX-512"
    print(f"as_cpu {args.cpu}: {without}", flush=True)
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    main()
