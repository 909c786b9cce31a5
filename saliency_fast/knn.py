"""Nearest-vocabulary search for Discretized Integrated Gradients.

DIG needs the k nearest vocabulary embeddings of each anchor word it visits. Instead of a
whole-vocabulary neighbour graph built up front (the official code and inseq spend tens of
seconds on one, and cache it with pickle), :class:`NeighborIndex` searches on demand, for the
words actually visited, and keeps each word's list in memory for the life of the process. A
full graph can still be precomputed (:meth:`NeighborIndex.precompute`) and cached on disk as
safetensors, keyed by a hash of the embedding matrix and k.

Backends: ``faiss-gpu`` (a GPU build of FAISS with CUDA present), ``faiss-cpu``
(``IndexFlatL2``), and ``torch`` (chunked matmul + top-k, on the embedding's device). The choice
is automatic (:func:`default_backend`: FAISS on the GPU when it can, else torch), overridable per
call or with the ``SALIENCY_FAST_KNN`` environment variable. Every backend only proposes candidates: the final distances are recomputed
exactly in float64 and ordered by (distance, index), so all backends return the same lists,
and equal distances are broken the same way.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import pathlib
import tempfile

import torch
from tqdm.auto import tqdm

from saliency_fast import ops

ENV_KNN = "SALIENCY_FAST_KNN"
BACKENDS = ("faiss-gpu", "faiss-cpu", "torch")
# FAISS's GPU k-selection handles at most this many neighbours per query.
_FAISS_GPU_MAX_K = 2048
# Query rows x vocabulary entries per torch matmul chunk (64 MiB of float32 distances).
_TORCH_CHUNK_ELEMENTS = 1 << 24
_INDEX_CACHE_SIZE = 4


@functools.cache
def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_gpu_available() -> bool:
    faiss = _faiss()
    return (
        faiss is not None
        and hasattr(faiss, "StandardGpuResources")
        and torch.cuda.is_available()
        and faiss.get_num_gpus() > 0
    )


def _available(backend: str) -> tuple[bool, str]:
    if backend == "faiss-gpu" and not faiss_gpu_available():
        return False, "needs a GPU build of FAISS (faiss-gpu) and a CUDA device"
    if backend == "faiss-cpu" and _faiss() is None:
        return False, "needs FAISS (pip install faiss-cpu)"
    return True, ""


def _validate_backend(backend: str, source: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    ok, why = _available(backend)
    if not ok:
        raise RuntimeError(f"{source}={backend!r} is not available: it {why}")
    return backend


def default_backend(device: torch.device | str | None = None) -> str:
    """The backend used for embeddings on ``device`` (default: the GPU when there is one).

    ``SALIENCY_FAST_KNN`` wins when set. Otherwise FAISS on the GPU when a GPU build of FAISS and
    CUDA are present, else torch (on the embedding's device). FAISS on the CPU is never the
    automatic choice: for DIG's query batches (tens to hundreds of words against the vocabulary)
    ``IndexFlatL2`` measured about 10x slower than torch's matmul + top-k on the same CPU
    (``benchmarks/bench_dig.py`` prints both); ask for it with ``backend="faiss-cpu"``.
    """
    requested = os.environ.get(ENV_KNN, "").strip().lower()
    if requested:
        return _validate_backend(requested, ENV_KNN)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and faiss_gpu_available():
        return "faiss-gpu"
    return "torch"


def resolve_backend(backend: str | None, device: torch.device | str | None = None) -> str:
    """``backend`` checked for availability, or :func:`default_backend` when it is None."""
    if backend is None:
        return default_backend(device)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    return _validate_backend(backend.strip().lower(), "backend")


# ---------------------------------------------------------------------------------------------
# Candidate search (approximate order is fine: exact_rerank fixes it).


class _TorchSearch:
    """Squared distances by ``|q|^2 - 2 q.e + |e|^2`` in chunks of queries, then top-k."""

    def __init__(self, embedding: torch.Tensor):
        self.vectors = embedding if embedding.dtype in (torch.float32, torch.float64) else embedding.float()
        self.squared_norms = self.vectors.square().sum(-1)

    def __call__(self, queries: torch.Tensor, count: int) -> torch.Tensor:
        queries = queries.to(self.vectors.dtype)
        rows = max(1, _TORCH_CHUNK_ELEMENTS // self.vectors.shape[0])
        found = []
        for start in range(0, queries.shape[0], rows):
            q = queries[start : start + rows]
            distances = torch.addmm(self.squared_norms, q, self.vectors.T, alpha=-2)
            found.append(torch.topk(distances, count, dim=-1, largest=False, sorted=False).indices)
        return torch.cat(found) if found else queries.new_empty((0, count), dtype=torch.long)


class _FaissSearch:
    def __init__(self, embedding: torch.Tensor, gpu: bool):
        faiss = _faiss()
        vectors = embedding.detach().float().cpu().contiguous().numpy()
        if gpu:
            self.resources = faiss.StandardGpuResources()
            self.index = faiss.GpuIndexFlatL2(self.resources, vectors.shape[1])
        else:
            self.index = faiss.IndexFlatL2(vectors.shape[1])
        self.index.add(vectors)
        self.device = embedding.device

    def __call__(self, queries: torch.Tensor, count: int) -> torch.Tensor:
        _, indices = self.index.search(queries.detach().float().cpu().contiguous().numpy(), count)
        return torch.from_numpy(indices).to(self.device)


def _make_searcher(embedding: torch.Tensor, backend: str):
    if backend == "torch":
        return _TorchSearch(embedding)
    return _FaissSearch(embedding, gpu=backend == "faiss-gpu")


def exact_rerank(
    embedding: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor, k: int, exclude: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each query's ``candidates`` by exact float64 distance, equal distances by index,
    drop ``exclude[i]`` from row i, keep ``k``. Returns (distances float64, indices int64)."""
    by_index = torch.sort(candidates, dim=-1).values
    distances = ops.dig_exact_distances(embedding, queries.to(embedding.dtype), by_index)
    if exclude is not None:
        distances = distances.masked_fill(by_index == exclude.unsqueeze(1), float("inf"))
    order = torch.sort(distances, dim=-1, stable=True).indices[:, :k]
    return distances.gather(1, order), by_index.gather(1, order)


def _candidate_count(vocab: int, k: int) -> int:
    # enough spare candidates that float32 rounding in the backend cannot push a true neighbour
    # out before the exact rerank
    return min(vocab, k + 1 + max(16, k // 4))


def _check_embedding(embedding) -> None:
    if not isinstance(embedding, torch.Tensor):
        raise TypeError(f"embedding_matrix must be a torch.Tensor, got {type(embedding).__name__}")
    if embedding.dim() != 2 or embedding.shape[0] < 2:
        raise ValueError(
            f"embedding_matrix must have shape (vocab_size >= 2, embed_dim), got {tuple(embedding.shape)}"
        )
    if not embedding.is_floating_point():
        raise TypeError(f"embedding_matrix must have a floating dtype, got {embedding.dtype}")


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"n_neighbors must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {k}")


def search(
    embedding: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    backend: str | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``embedding`` to each row of ``queries`` (``[M, D]``), nearest
    first, by exact float64 distance with ties by index; ``exclude`` (int64 ``[M]``) drops one
    index per query (a word itself). Returns (distances float64 ``[M, k]``, indices ``[M, k]``).
    Builds the backend's index for this call: use :class:`NeighborIndex` for repeated searches.
    """
    _check_embedding(embedding)
    _check_k(k)
    k = min(k, embedding.shape[0] - (exclude is not None))
    searcher = _make_searcher(embedding.detach(), resolve_backend(backend, embedding.device))
    return _search_with(searcher, embedding.detach(), queries, k, exclude)


def _search_with(searcher, embedding, queries, k, exclude):
    count = _candidate_count(embedding.shape[0], k)
    if isinstance(searcher, _FaissSearch) and searcher.device.type == "cuda" and count > _FAISS_GPU_MAX_K:
        searcher = _TorchSearch(embedding)
    queries = queries.to(embedding.device)
    return exact_rerank(embedding, queries, searcher(queries, count), k, exclude)


# ---------------------------------------------------------------------------------------------
# Per-word neighbour lists, searched on demand and cached.


def _default_cache_dir() -> pathlib.Path:
    root = os.environ.get("SALIENCY_FAST_CACHE", pathlib.Path.home() / ".cache" / "saliency_fast")
    return pathlib.Path(root) / "knn"


def embedding_digest(embedding: torch.Tensor) -> str:
    """sha256 of the matrix's dtype, shape and bytes: the key of its cached neighbour graph."""
    data = embedding.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}:{tuple(data.shape)}:".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class NeighborIndex:
    """The ``k`` nearest vocabulary words of any word (itself excluded), searched when first
    asked for and kept in memory: ``neighbors(words)`` returns int64 ``[len(words), k]``."""

    def __init__(self, embedding_matrix: torch.Tensor, k: int, backend: str | None = None):
        _check_embedding(embedding_matrix)
        _check_k(k)
        embedding = embedding_matrix.detach()
        if embedding.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(embedding))).all()):
            # one pass without a mask the size of the vocabulary: NaN and inf reach the min or max
            raise ValueError("embedding_matrix contains NaN or infinite values")
        self.embedding = embedding
        self.vocab_size = embedding.shape[0]
        self.k = min(k, self.vocab_size - 1)
        self.backend = resolve_backend(backend, embedding.device)
        self._searcher = None
        self._table = torch.full((self.vocab_size, self.k), -1, dtype=torch.long, device=embedding.device)
        self._known = torch.zeros(self.vocab_size, dtype=torch.bool, device=embedding.device)

    def _search_words(self, words: torch.Tensor) -> torch.Tensor:
        if self._searcher is None:
            self._searcher = _make_searcher(self.embedding, self.backend)
        return _search_with(self._searcher, self.embedding, self.embedding[words], self.k, words)[1]

    def neighbors(self, words: torch.Tensor) -> torch.Tensor:
        """Neighbour lists of ``words`` (int64, any shape), nearest first: ``[*words.shape, k]``."""
        words = words.to(self._table.device)
        if words.numel() and (int(words.min()) < 0 or int(words.max()) >= self.vocab_size):
            raise ValueError(f"word ids must lie in [0, {self.vocab_size}), got {int(words.min())}..{int(words.max())}")
        flat = words.reshape(-1)
        missing = torch.unique(flat[~self._known.index_select(0, flat)])
        if missing.numel():
            self._table[missing] = self._search_words(missing)
            self._known[missing] = True
        return self._table.index_select(0, flat).reshape(*words.shape, self.k)

    @property
    def searched_words(self) -> int:
        return int(self._known.sum())

    def precompute(self, cache_dir: str | os.PathLike | None = None, chunk_size: int = 1024, progress: bool = True):
        """Search every word's neighbours (the whole graph). With ``cache_dir`` (default:
        ``$SALIENCY_FAST_CACHE/knn``), load the graph from ``knn-<sha256>-k<k>.safetensors`` when
        it is there, else compute and write it atomically. Returns self."""
        from safetensors.torch import load_file, save_file

        directory = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        path = directory / f"knn-{embedding_digest(self.embedding)}-k{self.k}.safetensors"
        if path.exists():
            table = load_file(str(path))["neighbors"]
            if tuple(table.shape) != (self.vocab_size, self.k) or table.dtype != torch.long:
                raise ValueError(f"cached neighbour graph {path} has shape {tuple(table.shape)}, expected "
                                 f"({self.vocab_size}, {self.k}); delete the file to rebuild it")
            self._table = table.to(self._table.device)
            self._known.fill_(True)
            return self
        todo = (~self._known).nonzero().squeeze(1)
        for start in tqdm(range(0, todo.numel(), chunk_size), desc="DIG neighbour graph", disable=not progress):
            self.neighbors(todo[start : start + chunk_size])
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as handle:
            tmp = handle.name
        try:
            save_file({"neighbors": self._table.cpu().contiguous()}, tmp, metadata={"k": str(self.k)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self


_indexes: collections.OrderedDict = collections.OrderedDict()


def neighbor_index(embedding_matrix: torch.Tensor, k: int, backend: str | None = None) -> NeighborIndex:
    """The process-wide :class:`NeighborIndex` of this matrix, k and backend, so neighbour lists
    found by one attribution serve the next. The cache holds the matrix (its memory cannot be
    reused under the same address) and drops an index when the matrix is modified in place."""
    _check_embedding(embedding_matrix)
    resolved = resolve_backend(backend, embedding_matrix.device)
    key = (
        embedding_matrix.data_ptr(), tuple(embedding_matrix.shape), tuple(embedding_matrix.stride()),
        embedding_matrix.dtype, embedding_matrix.device, k, resolved,
    )
    cached = _indexes.get(key)
    if cached is not None and cached[1] == embedding_matrix._version:
        _indexes.move_to_end(key)
        return cached[2]
    index = NeighborIndex(embedding_matrix, k, resolved)
    _indexes[key] = (embedding_matrix, embedding_matrix._version, index)
    while len(_indexes) > _INDEX_CACHE_SIZE:
        _indexes.popitem(last=False)
    return index


def clear_cache() -> None:
    """Forget every cached :class:`NeighborIndex` (and the neighbour lists found so far)."""
    _indexes.clear()
