"""Loads the compiled extension, whose import registers the ``saliency_fast::*`` torch ops.

Order: the extension built at install time (``saliency_fast._C``); else a JIT build of
``csrc/`` with ninja into a cache dir (CUDA sources only when a GPU is present, since nvcc
builds take minutes); else nothing, and :mod:`saliency_fast.ops` falls back to the reference.
``SALIENCY_FAST_BACKEND=reference`` skips loading, ``native`` turns a failure into an error.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pathlib
import warnings

import torch

ENV_BACKEND = "SALIENCY_FAST_BACKEND"
BACKEND_CHOICES = ("auto", "native", "reference")
OP_NAMESPACE = "saliency_fast"
_CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"


@dataclasses.dataclass(frozen=True)
class NativeStatus:
    loaded: bool
    source: str | None  # "installed" | "jit" | None
    reason: str | None  # why native is not loaded, if it is not

    @property
    def cpu(self) -> bool:
        return self.loaded and _has_kernel("CPU")

    @property
    def cuda(self) -> bool:
        return self.loaded and _has_kernel("CUDA")


def _has_kernel(dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{OP_NAMESPACE}::ig_accumulate", dispatch_key)


def requested_backend() -> str:
    value = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if value not in BACKEND_CHOICES:
        raise ValueError(f"{ENV_BACKEND} must be one of {BACKEND_CHOICES}, got {value!r}")
    return value


def _jit_sources() -> list[str]:
    sources = [str(p) for p in sorted(_CSRC.glob("*.cpp")) + sorted((_CSRC / "cpu").glob("*.cpp"))]
    if torch.cuda.is_available() and torch.version.cuda:
        sources += [str(p) for p in sorted((_CSRC / "cuda").glob("*.cu"))]
    return sources


def _jit_build() -> None:
    from torch.utils import cpp_extension

    cache = pathlib.Path(os.environ.get("SALIENCY_FAST_CACHE", pathlib.Path.home() / ".cache" / "saliency_fast"))
    build_dir = cache / f"jit-torch{torch.__version__}"
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = _jit_sources()
    cpp_extension.load(
        name="saliency_fast_jit",
        sources=sources,
        extra_include_paths=[str(_CSRC / "include")],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


@functools.cache
def status() -> NativeStatus:
    """Load the extension once per process and say how it went."""
    backend = requested_backend()
    if backend == "reference":
        return NativeStatus(False, None, f"{ENV_BACKEND}=reference")
    errors = []
    try:
        importlib.import_module("saliency_fast._C")
        return NativeStatus(True, "installed", None)
    except ImportError as exc:
        errors.append(f"no installed extension ({exc})")
    if _CSRC.is_dir():
        try:
            _jit_build()
            return NativeStatus(True, "jit", None)
        except Exception as exc:  # a JIT build can fail in many ways (no compiler, no ninja, ...)
            errors.append(f"JIT build of csrc/ failed ({type(exc).__name__}: {str(exc).strip()[:300]})")
    else:
        errors.append("no csrc/ to JIT-build")
    reason = "; ".join(errors)
    if backend == "native":
        raise RuntimeError(f"{ENV_BACKEND}=native but the native extension could not be loaded: {reason}")
    warnings.warn(f"saliency_fast: native kernels unavailable, using the PyTorch reference: {reason}", stacklevel=3)
    return NativeStatus(False, None, reason)
