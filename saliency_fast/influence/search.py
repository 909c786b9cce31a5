"""Maximum-inner-product search over training-example vectors, for TracIn proponents and
opponents: FAISS on the GPU when a GPU build and a device are present, else FAISS on the CPU,
else torch (exact matmul + top-k). All three search ``IndexFlatIP``-style (exact); the scores
of the found rows are then recomputed in the vectors' own dtype, so the backend changes speed,
not results. The backend used is recorded (:attr:`InnerProductIndex.backend`).

It also speaks captum's ``NearestNeighbors`` interface (``setup``, ``get_nearest_neighbors``),
so :class:`~saliency_fast.influence.TracInCPFastRandProj` uses it by default in place of Annoy.
"""

from __future__ import annotations

import torch

from saliency_fast import knn

BACKENDS = ("faiss-gpu", "faiss-cpu", "torch")


def default_backend() -> str:
    if knn.faiss_gpu_available():
        return "faiss-gpu"
    return "faiss-cpu" if knn._faiss() is not None else "torch"


class InnerProductIndex:
    """Exact top-k by inner product; rows are added in chunks (so a data set is streamed from
    shards, never held twice) and searched for the largest (``largest=False``: smallest) scores."""

    def __init__(self, dim: int | None = None, backend: str | None = None):
        backend = default_backend() if backend is None else backend
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend != "torch" and knn._faiss() is None:
            raise RuntimeError(f"backend={backend!r} needs FAISS (pip install faiss-cpu, or the gpu extra)")
        if backend == "faiss-gpu" and not knn.faiss_gpu_available():
            raise RuntimeError("backend='faiss-gpu' needs a GPU build of FAISS and a CUDA device")
        self.backend = backend
        self.dim = dim
        # the vectors themselves are kept only where FAISS's float32 copy cannot stand in for them
        # (the torch backend, or float64 vectors rescored in their own precision)
        self._rows: list[torch.Tensor] = []
        self._dtype: torch.dtype | None = None
        self._faiss_index = None
        self.ntotal = 0

    def _make_faiss(self, dim: int):
        faiss = knn._faiss()
        index = faiss.IndexFlatIP(dim)
        if self.backend == "faiss-gpu":
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        return index

    def add(self, vectors: torch.Tensor) -> None:
        vectors = vectors.detach()
        if vectors.dim() != 2:
            raise ValueError(f"vectors must have shape (N, dim), got {tuple(vectors.shape)}")
        if self.dim is None:
            self.dim = vectors.shape[1]
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} columns, got {vectors.shape[1]}")
        self._dtype = vectors.dtype if self._dtype is None else self._dtype
        if self.backend == "torch" or vectors.dtype != torch.float32:
            self._rows.append(vectors.cpu())
        if self.backend != "torch":
            if self._faiss_index is None:
                self._faiss_index = self._make_faiss(self.dim)
            self._faiss_index.add(vectors.float().cpu().contiguous().numpy())
        self.ntotal += vectors.shape[0]

    def vectors(self) -> torch.Tensor:
        if len(self._rows) > 1:
            self._rows = [torch.cat(self._rows)]
        return self._rows[0]

    def _rows_at(self, indices: torch.Tensor) -> torch.Tensor:
        """``[q, k, dim]``: the indexed vectors at ``indices``, in their own dtype."""
        if self._rows:
            return self.vectors()[indices]
        found = self._faiss_index.reconstruct_batch(indices.flatten().numpy())
        return torch.from_numpy(found).view(*indices.shape, self.dim)

    def search(self, queries: torch.Tensor, k: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, scores)``, each ``[n_queries, k]``, best first."""
        if not 1 <= k <= self.ntotal:
            raise ValueError(f"k must be between 1 and the number of indexed rows ({self.ntotal}), got {k}")
        queries = queries.detach().cpu()
        sign = 1.0 if largest else -1.0
        queries = queries.to(self._dtype)
        if self.backend == "torch":
            _, indices = torch.topk(sign * (queries @ self.vectors().T), k, dim=1)
        else:
            # a few spare candidates, so float32 ties at the cut are settled by the exact rescoring
            wanted = min(self.ntotal, k + 8)
            _, found = self._faiss_index.search((sign * queries).float().contiguous().numpy(), wanted)
            indices = torch.from_numpy(found).long()
        exact = torch.einsum("qd,qkd->qk", queries, self._rows_at(indices))
        order = torch.sort(sign * exact, dim=1, descending=True, stable=True).indices[:, :k]
        return indices.gather(1, order), exact.gather(1, order)

    # captum's NearestNeighbors interface
    def setup(self, data: torch.Tensor) -> None:
        self.__init__(None, self.backend)
        self.add(data.flatten(start_dim=1))

    def get_nearest_neighbors(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices, scores = self.search(query.flatten(start_dim=1), min(k, self.ntotal))
        return indices.to(query.device), scores.to(query.device)
