"""What backend is active and why: ``saliency_fast.info()`` / ``python -m saliency_fast info``."""

from __future__ import annotations

import torch

from saliency_fast import __version__, _native, ops


def info() -> dict:
    """Report the active backend: ``backend`` ("native" or "reference"), which native kernels are
    compiled in, whether CUDA is usable, versions, and ``reason`` when native is not active."""
    status = _native.status()
    backend = ops.active_backend()
    reason = status.reason
    if reason is None and backend == "reference":
        reason = "forced by set_backend('reference')"
    report = {
        "backend": backend,
        "native_cpu": status.cpu,
        "native_cuda": status.cuda,
        "native_source": status.source,
        "cuda_available": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "version": __version__,
        "reason": reason,
    }
    try:
        from saliency_fast import knn
    except ImportError:
        return report
    report["knn_backend"] = knn.default_backend()
    return report
