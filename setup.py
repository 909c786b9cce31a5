"""Builds the native extension ``saliency_fast._C``.

CUDA kernels are compiled when torch is a CUDA build and a CUDA toolkit is found, and either a
GPU is present or ``FORCE_CUDA=1`` (build hosts with nvcc but no GPU). ``FORCE_ONLY_CPU=1``
builds the CPU kernels alone. ``TORCH_CUDA_ARCH_LIST`` defaults to Ampere and Hopper.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and shutil.which("nvcc"):
        # follow wrapper scripts and symlinks (/usr/local/bin/nvcc may exec the real one)
        for candidate in ("/usr/local/cuda", str(pathlib.Path(shutil.which("nvcc")).resolve().parent.parent)):
            if pathlib.Path(candidate, "include", "cuda_runtime.h").exists():
                return candidate
    return home


def build_cuda() -> bool:
    if os.environ.get("FORCE_ONLY_CPU") == "1" or torch.version.cuda is None:
        return False
    if _cuda_home() is None:
        return False
    return torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1"


def _wheel_cuda_includes() -> list[str]:
    """Headers that torch's CUDA headers include (cusparse.h, cublas_v2.h, ...) ship in the
    nvidia-* wheels installed with a CUDA build of torch, not always in the toolkit."""
    import site

    found = []
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        found += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
    return found


def extensions():
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [str(ROOT / "csrc" / "include")]
    # the -std torch needs is added by cpp_extension; no fused multiply-add where the kernels were not
    # written with one (GCC contracts a * b + c by default in C++, even across intrinsics, wherever
    # the target has FMA), so every CPU rounds as the reference does
    cxx_flags = ["-O3", "-fvisibility=hidden", "-ffp-contract=off"]
    # at::parallel_for is a header template: without OpenMP in *our* compile it runs every kernel on
    # one thread whatever torch.get_num_threads() says. Linking -fopenmp resolves to the libgomp.so.1
    # torch has already loaded (one runtime, one thread pool).
    openmp = ["-fopenmp"]
    if build_cuda():
        os.environ.setdefault("CUDA_HOME", _cuda_home())
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        return [
            cpp_extension.CUDAExtension(
                "saliency_fast._C",
                sources,
                include_dirs=include_dirs + _wheel_cuda_includes(),
                extra_compile_args={"cxx": cxx_flags + openmp, "nvcc": ["-O3"]},
                extra_link_args=openmp,
            )
        ]
    return [
        cpp_extension.CppExtension(
            "saliency_fast._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags + openmp},
            extra_link_args=openmp,
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)})
