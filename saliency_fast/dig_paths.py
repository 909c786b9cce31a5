"""DIG paths for a whole batch of tokens: the batched builder driven by the native ops, and the
plain per-token reference (:func:`saliency_fast.reference.dig_token_path`) over a batch.

A path has ``P = (n_anchors + 1) * 2**factor + 1`` points, baseline first, input last; paths are
returned as ``[P, *input_ids.shape, D]``.

Step counts follow the official code (INK-USC/DIG): ``n_steps = m`` anchors, monotonization by
``1/m``, ``m + 2`` points. inseq's port counts points instead (``n_steps`` points,
``n_steps - 2`` anchors, still monotonizing by ``1/n_steps``): :func:`step_plan` maps either
convention to (anchors, monotonization steps).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from saliency_fast import _checks, ops, reference
from saliency_fast.knn import NeighborIndex

CONVENTIONS = ("official", "inseq")


def step_plan(n_steps: int, convention: str = "official") -> tuple[int, int]:
    """(anchors per path, monotonization steps) for ``n_steps`` under ``convention``."""
    _checks.positive_int("n_steps", n_steps)
    if convention == "official":
        return n_steps, n_steps
    if convention == "inseq":
        if n_steps < 2:
            raise ValueError(f"n_steps must be >= 2 with convention='inseq' (it counts both endpoints), got {n_steps}")
        return n_steps - 2, n_steps
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _check_ids(name: str, ids, vocab_size: int) -> None:
    _checks.tensor(name, ids)
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold integer token ids (int64), got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"{name} must lie in [0, {vocab_size}) (the embedding matrix's rows), "
                         f"got {int(ids.min())}..{int(ids.max())}")


def _check_build_args(input_ids, baseline_ids, embedding, n_anchors, monotonize_steps, strategy, factor, constant):
    _checks.tensor("embedding_matrix", embedding)
    _checks.floating("embedding_matrix", embedding)
    if embedding.dim() != 2:
        raise ValueError(f"embedding_matrix must have shape (vocab_size, embed_dim), got {tuple(embedding.shape)}")
    _check_ids("input_ids", input_ids, embedding.shape[0])
    _check_ids("baseline_ids", baseline_ids, embedding.shape[0])
    _checks.same_shape("baseline_ids", baseline_ids, "input_ids", input_ids)
    if isinstance(n_anchors, bool) or not isinstance(n_anchors, int) or n_anchors < 0:
        raise ValueError(f"n_anchors must be an int >= 0, got {n_anchors!r}")
    _checks.positive_int("monotonize_steps", monotonize_steps)
    _checks.dig_strategy(strategy)
    if isinstance(factor, bool) or not isinstance(factor, int) or not 0 <= factor <= 8:
        raise ValueError(f"factor must be an int in [0, 8] (rounds of upscaling), got {factor!r}")
    if constant is not None:
        _checks.tensor("constant", constant)
        if constant.dtype != torch.bool:
            raise TypeError(f"constant must be a bool mask, got {constant.dtype}")
        _checks.same_shape("constant", constant, "input_ids", input_ids)


def _upscaled(points: torch.Tensor, factor: int) -> torch.Tensor:
    for _ in range(factor):
        points = reference.dig_upscale(points)
    return points


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an index of any shape, by ``index_select`` (row copies: several times
    faster than advanced indexing for the small gathers of each step)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


class _AnchorScores:
    """Sort keys of each anchor word's neighbours, computed once per distinct (anchor word,
    baseline word) pair within a build.

    DIG scores an anchor's neighbours against the anchor word's own embedding and the baseline,
    never against the token's monotonized point, so the scores depend on that pair alone. Paths
    converge on the same words (on all-MiniLM-L6-v2, 4 x 32 tokens x 30 steps visit about 300
    distinct words), so scoring each pair once cuts the work by about the same factor. (The fused
    op :func:`saliency_fast.ops.dig_select_anchor` scores, picks and monotonizes in one call, but
    it rescores every token at every step: about 13x the scoring work here.)
    """

    def __init__(self, embedding: torch.Tensor, index: NeighborIndex, steps: int, strategy: str):
        self.embedding, self.index, self.steps, self.strategy = embedding, index, steps, strategy
        self.vocab_size = embedding.shape[0]
        self.row_of: dict[int, int] = {}
        self.keys = embedding.new_empty((64, index.k), dtype=torch.float64)  # grows by doubling

    def _score(self, pairs: list[int]) -> None:
        pair = torch.tensor(pairs, device=self.embedding.device)
        words, base_words = pair // self.vocab_size, pair % self.vocab_size
        counts, norms = ops.dig_monotonic_scores(
            _rows(self.embedding, self.index.neighbors(words)), _rows(self.embedding, words),
            _rows(self.embedding, base_words), self.steps,
        )
        first, stop = len(self.row_of), len(self.row_of) + len(pairs)
        if stop > self.keys.shape[0]:
            grown = self.keys.new_empty((max(stop, 2 * self.keys.shape[0]), self.keys.shape[1]))
            grown[:first] = self.keys[:first]
            self.keys = grown
        self.keys[first:stop] = reference.dig_rank_keys(counts, norms, self.strategy)
        self.row_of.update((p, first + i) for i, p in enumerate(pairs))

    def rank_keys(self, words: torch.Tensor, base_words: torch.Tensor) -> torch.Tensor:
        """Sort keys (smaller is better) of each word's neighbours, ``[len(words), k]``."""
        distinct, inverse = torch.unique(words * self.vocab_size + base_words, return_inverse=True)
        distinct = distinct.tolist()
        missing = [p for p in distinct if p not in self.row_of]
        if missing:
            self._score(missing)
        rows = torch.tensor([self.row_of[p] for p in distinct], device=words.device)
        return _rows(self.keys, rows.index_select(0, inverse))


@torch.no_grad()
def build_paths(
    input_ids: torch.Tensor,
    baseline_ids: torch.Tensor,
    embedding_matrix: torch.Tensor,
    index: NeighborIndex,
    *,
    n_anchors: int,
    monotonize_steps: int,
    strategy: str = "greedy",
    factor: int = 0,
    constant: torch.Tensor | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """DIG paths of every token of ``input_ids`` (any shape) at once: ``[P, *input_ids.shape, D]``.

    Each anchor step advances all tokens still on their way together: their neighbours
    (``index``, searched on demand) are scored with :func:`saliency_fast.ops.dig_monotonic_scores`
    (once per distinct anchor and baseline word, see :class:`_AnchorScores`), the best valid one
    picked, and monotonized with :func:`saliency_fast.ops.dig_monotonize`. Equal, token for token,
    to :func:`build_paths_reference` given the same neighbours. ``constant`` marks tokens (special
    tokens) whose path stays at their own embedding.
    """
    _check_build_args(input_ids, baseline_ids, embedding_matrix, n_anchors, monotonize_steps, strategy, factor,
                      constant)
    if index.embedding.shape != embedding_matrix.shape or index.embedding.device != embedding_matrix.device:
        raise ValueError("index must be a NeighborIndex of embedding_matrix (same shape and device)")
    device = embedding_matrix.device
    words = input_ids.reshape(-1).to(device=device, dtype=torch.long)
    base_words = baseline_ids.reshape(-1).to(device=device, dtype=torch.long)
    fixed = constant.reshape(-1).to(device) if constant is not None else torch.zeros_like(words, dtype=torch.bool)
    x, b = _rows(embedding_matrix, words), _rows(embedding_matrix, base_words)
    on_path = ~fixed & (words != base_words)
    scores = _AnchorScores(embedding_matrix, index, monotonize_steps, strategy)

    visited = words.new_empty((words.numel(), n_anchors + 1))  # the words on each path so far
    visited[:, 0] = words
    previous = words.clone()
    current = x.clone()
    points = [x]
    for step in tqdm(range(1, n_anchors + 1), desc="DIG paths", disable=not show_progress):
        rows = on_path.nonzero().squeeze(1)
        if rows.numel():
            row_words, row_base = previous.index_select(0, rows), base_words.index_select(0, rows)
            neighbors = index.neighbors(row_words)
            seen = (neighbors.unsqueeze(-1) == visited.index_select(0, rows)[:, :step].unsqueeze(1)).any(-1)
            valid = (neighbors != row_base.unsqueeze(1)) & ~seen
            choice = reference.dig_pick(scores.rank_keys(row_words, row_base), valid)
            # no valid neighbour: the anchor is the baseline word, which monotonizes to itself
            chosen = torch.where(choice >= 0, neighbors.gather(1, choice.clamp_min(0).unsqueeze(1)).squeeze(1),
                                 row_base)
            moved = ops.dig_monotonize(_rows(embedding_matrix, chosen), _rows(current, rows), _rows(b, rows),
                                       monotonize_steps)
            current.index_copy_(0, rows, moved)
            previous.index_copy_(0, rows, chosen)
            on_path.index_copy_(0, rows, chosen != row_base)
        visited[:, step] = previous
        points.append(current.clone())
    points.append(torch.where(fixed.unsqueeze(1), x, b))
    paths = _upscaled(torch.stack(points[::-1]), factor)
    return paths.reshape(paths.shape[0], *input_ids.shape, embedding_matrix.shape[1])


@torch.no_grad()
def build_paths_reference(
    input_ids: torch.Tensor,
    baseline_ids: torch.Tensor,
    embedding_matrix: torch.Tensor,
    neighbors,
    *,
    n_anchors: int,
    monotonize_steps: int,
    strategy: str = "greedy",
    factor: int = 0,
    constant: torch.Tensor | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """The plain reference of :func:`build_paths`: :func:`reference.dig_token_path` token by token,
    with ``neighbors(word) -> ids`` (nearest first). Slow by design, as the official code."""
    _check_build_args(input_ids, baseline_ids, embedding_matrix, n_anchors, monotonize_steps, strategy, factor,
                      constant)
    words, base_words = input_ids.reshape(-1).tolist(), baseline_ids.reshape(-1).tolist()
    fixed = constant.reshape(-1).tolist() if constant is not None else [False] * len(words)
    paths = [
        reference.dig_token_path(w, bw, embedding_matrix, neighbors, n_anchors, strategy, monotonize_steps, factor, f)
        for w, bw, f in tqdm(list(zip(words, base_words, fixed)), desc="DIG paths (reference)",
                             disable=not show_progress)
    ]
    length = reference.dig_path_length(n_anchors, factor)
    if not paths:
        return embedding_matrix.new_empty((length, *input_ids.shape, embedding_matrix.shape[1]))
    return torch.stack(paths, dim=1).reshape(length, *input_ids.shape, embedding_matrix.shape[1])


def monotonic_steps(paths: torch.Tensor) -> torch.Tensor:
    """Per token (``paths`` is ``[P, ..., D]``): whether every step moves monotonically toward the
    input, i.e. each point lies between the previous one and the input in every dim."""
    target = paths[-1]
    ok = reference.dig_monotonic_mask(paths[1:], paths[:-1], target.unsqueeze(0).expand_as(paths[1:]))
    return ok.all(-1).all(0)
