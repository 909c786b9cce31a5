"""Discretized Integrated Gradients (DIG).

Sanyal & Ren, "Discretized Integrated Gradients for Explaining Language Models", EMNLP 2021
(https://aclanthology.org/2021.emnlp-main.805). IG integrates along the straight line from the
baseline to the input embedding, through points that are no word at all; DIG instead walks
through real word embeddings ("anchors"): from each token's word it repeatedly moves to a nearby
vocabulary word, chosen by ``greedy`` (smallest monotonization correction) or ``maxcount`` (most
monotonic dims) and monotonized so the path only ever moves toward the input in every dim, until
the baseline word (pad or mask). See :mod:`saliency_fast.dig_paths` for the path and
:mod:`saliency_fast.knn` for the neighbour search.

The attribution is the left Riemann sum along the path with per-dimension steps,
``sum_i grad(x_i) * (x_{i+1} - x_i)`` (``x_0`` the baseline, ``x_{P-1}`` the input). Only the word
embeddings move; positions stay real (the forward function adds them). Completeness does not hold
exactly: the convergence delta ``sum(attributions) - (F(input) - F(baseline))`` is often large for
DIG (39-372 % of ``F(input) - F(baseline)`` with greedy, 134-1192 % with max-count, measured by
``benchmarks/bench_dig.py`` on all-MiniLM-L6-v2 sentence similarity with 30 anchors and 50
neighbours), so report it.

Where we differ from the official code (INK-USC/DIG) and inseq's port, on purpose:

- the neighbour lists are searched on demand for the anchors visited, not read from a graph over
  the whole vocabulary (same lists: exact distances, equal ones broken by index);
- the gradient at the input, which the official code computes and multiplies by a zero step, is
  not computed;
- special tokens keep a constant path at their own embedding (inseq's starts at the baseline);
- inseq concatenates the paths of a batch example-major but expands targets and additional
  arguments step-major and sums steps as if step-major, so with several examples it mixes them up;
  here every example gets its own path, target and arguments (a batch equals one at a time);
- greedy's correction norm is compared in float64 (the official code uses float32), so rounding
  does not turn close candidates into ties.

``n_steps`` counts anchors as the official code does (``m`` anchors, monotonization by ``1/m``,
``m + 2`` points). ``convention="inseq"`` counts points instead, as inseq's port does
(``n_steps - 2`` anchors, still monotonizing by ``1/n_steps``), to reproduce its numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from saliency_fast import dig_paths, knn, reference
from saliency_fast.methods import _common
from saliency_fast.methods.gradient import GradientAttribution
from saliency_fast.methods.integrated_gradients import steps_per_chunk

DEFAULT_N_STEPS = 30
DEFAULT_N_NEIGHBORS = 500


class DIGAttribution(NamedTuple):
    """``attributions`` ``[B, L, D]`` (float32, float64 for float64 embeddings), the signed
    completeness error per example ``convergence_delta`` ``[B]`` (None unless asked for), and the
    number of points on each path ``n_points``."""

    attributions: torch.Tensor
    convergence_delta: torch.Tensor | None
    n_points: int


def _ids(name: str, value, embedding: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids, got "
                        f"{value.dtype if isinstance(value, torch.Tensor) else type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, seq_len), got {tuple(value.shape)}")
    return value.to(device=embedding.device, dtype=torch.long)


def _baseline_ids(baseline, input_ids: torch.Tensor) -> torch.Tensor:
    """A token id (int or 0-dim tensor) or ids shaped ``(seq_len,)`` or like ``input_ids``."""
    if baseline is None:
        raise ValueError("a baseline is needed: pass baseline_token_id (e.g. the pad or mask id) or baseline_ids")
    if isinstance(baseline, bool) or not isinstance(baseline, (int, torch.Tensor)):
        raise TypeError(f"baselines must be a token id or a tensor of token ids, got {type(baseline).__name__}")
    if isinstance(baseline, torch.Tensor) and (baseline.is_floating_point() or baseline.dtype == torch.bool):
        raise TypeError(
            f"baselines must be token ids (a DIG path ends at a vocabulary word), got a {baseline.dtype} tensor"
        )
    ids = torch.as_tensor(baseline, dtype=torch.long, device=input_ids.device)
    if ids.dim() == 0 or tuple(ids.shape) in (tuple(input_ids.shape[1:]), tuple(input_ids.shape)):
        return ids.expand_as(input_ids)
    raise ValueError(f"baselines must be one token id or ids of shape {tuple(input_ids.shape)} or "
                     f"{tuple(input_ids.shape[1:])}, got shape {tuple(ids.shape)}")


def _special_mask(input_ids: torch.Tensor, special_token_ids) -> torch.Tensor:
    ids = torch.as_tensor(list(special_token_ids), dtype=torch.long, device=input_ids.device)
    return torch.isin(input_ids, ids)


def dig_attribute_embeddings(
    forward_on_embeds,
    input_ids: torch.Tensor,
    embedding_matrix: torch.Tensor,
    baseline_id,
    *,
    target=None,
    additional_forward_args=None,
    strategy: str = "greedy",
    n_steps: int = DEFAULT_N_STEPS,
    n_neighbors: int = DEFAULT_N_NEIGHBORS,
    factor: int = 0,
    special_token_ids=(),
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    knn_backend: str | None = None,
    convention: str = "official",
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
) -> DIGAttribution:
    """DIG attributions of the word embeddings of ``input_ids`` (``[B, L]``).

    ``forward_on_embeds(word_embeddings [n, L, D], *additional_forward_args)`` returns the model
    output for ``n`` rows (positions and the rest of the embedding layer are the forward's job);
    ``target`` picks one scalar per row, as in captum. ``baseline_id``: the baseline word, one id or
    ids shaped like ``input_ids`` (or ``(L,)``). Tokens in ``special_token_ids`` keep a constant
    path (zero attribution). ``dtype`` autocasts the gradient passes (see
    :class:`saliency_fast.methods.gradient.GradientAttribution`).
    """
    if not callable(forward_on_embeds):
        raise TypeError(f"forward_on_embeds must be callable, got {type(forward_on_embeds).__name__}")
    _common.check_positive_int("internal_batch_size", internal_batch_size, allow_none=True)
    if not isinstance(return_convergence_delta, bool):
        raise TypeError(f"return_convergence_delta must be a bool, got {type(return_convergence_delta).__name__}")
    if not isinstance(embedding_matrix, torch.Tensor):
        raise TypeError(f"embedding_matrix must be a torch.Tensor, got {type(embedding_matrix).__name__}")
    embedding = embedding_matrix.detach()
    input_ids = _ids("input_ids", input_ids, embedding)
    baseline_ids = _baseline_ids(baseline_id, input_ids)
    n_anchors, monotonize_steps = dig_paths.step_plan(n_steps, convention)
    n_examples = input_ids.shape[0]
    target = _common.Target.parse(target, n_examples)
    args = _common.format_additional_forward_args(additional_forward_args, n_examples)
    dtype = _common.check_autocast_dtype(dtype)

    index = knn.neighbor_index(embedding, n_neighbors, knn_backend)
    paths = dig_paths.build_paths(
        input_ids, baseline_ids, embedding, index, n_anchors=n_anchors, monotonize_steps=monotonize_steps,
        strategy=strategy, factor=factor, constant=_special_mask(input_ids, special_token_ids),
        show_progress=show_progress,
    )
    with _common.gradient_mode(forward_on_embeds):
        attributions = _path_sum(forward_on_embeds, paths, target, args, internal_batch_size, dtype, show_progress)
        delta = None
        if return_convergence_delta:
            change = (_common.forward_values(forward_on_embeds, (paths[-1],), target, args)
                      - _common.forward_values(forward_on_embeds, (paths[0],), target, args))
            delta = attributions.flatten(1).sum(1) - change.to(attributions.dtype)
    return DIGAttribution(attributions, delta, paths.shape[0])


def _path_sum(forward_func, paths, target, args, internal_batch_size, dtype, show_progress) -> torch.Tensor:
    """``sum_i grad(x_i) * (x_{i+1} - x_i)`` over the path points ``[P, B, L, D]``, in chunks of
    points, accumulated in the opmath dtype."""
    n_points, n_examples = paths.shape[0], paths.shape[1]
    steps = n_points - 1  # no gradient at the input: its step is zero
    chunk = steps_per_chunk(internal_batch_size, n_examples) or steps
    acc_dtype = reference.opmath_dtype(paths.dtype)
    total = torch.zeros(paths.shape[1:], dtype=acc_dtype, device=paths.device)
    with tqdm(total=steps * n_examples, desc="DIG gradients", disable=not show_progress) as progress:
        for start in range(0, steps, chunk):
            stop = min(start + chunk, steps)
            points = paths[start:stop].reshape(-1, *paths.shape[2:])
            (grads,) = _common.input_gradients(
                forward_func, (points,), target, _common.repeat_args(args, stop - start), dtype
            )
            _common.check_finite("the gradient w.r.t. the path points", grads,
                                 " (the forward function is not finite there)")
            with torch.no_grad():
                step = paths[start + 1 : stop + 1].to(acc_dtype) - paths[start:stop].to(acc_dtype)
                total += (grads.reshape(step.shape).to(acc_dtype) * step).sum(0)
            progress.update((stop - start) * n_examples)
    return total


class DiscretizedIntegratedGradients(GradientAttribution):
    """Discretized Integrated Gradients over any forward function of word embeddings.

    ``DiscretizedIntegratedGradients(forward_func, embedding_matrix, strategy="greedy",
    n_neighbors=500, n_steps=30, factor=0, baseline_token_id=None, special_token_ids=())`` with
    captum's ``attribute(inputs, baselines, target, additional_forward_args, n_steps, method,
    internal_batch_size, return_convergence_delta)``. ``forward_func`` takes word embeddings
    ``[n, L, D]`` (rows of ``embedding_matrix``) then the additional args. The defaults are the
    paper's (30 anchors, 500 neighbours, no upscaling). See the module docstring for the algorithm
    and where it differs from the official code and inseq.
    """

    def __init__(
        self,
        forward_func,
        embedding_matrix: torch.Tensor,
        strategy: str = "greedy",
        n_neighbors: int = DEFAULT_N_NEIGHBORS,
        n_steps: int = DEFAULT_N_STEPS,
        factor: int = 0,
        baseline_token_id: int | None = None,
        special_token_ids=(),
        *,
        knn_backend: str | None = None,
        convention: str = "official",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(forward_func, dtype=dtype)
        if not isinstance(embedding_matrix, torch.Tensor):
            raise TypeError(f"embedding_matrix must be a torch.Tensor, got {type(embedding_matrix).__name__}")
        if embedding_matrix.dim() != 2:
            raise ValueError(
                f"embedding_matrix must be a tensor of shape (vocab_size, embed_dim), got {tuple(embedding_matrix.shape)}"
            )
        dig_paths.step_plan(n_steps, convention)
        self.embedding_matrix = embedding_matrix
        self.strategy = strategy
        self.n_neighbors = n_neighbors
        self.n_steps = n_steps
        self.factor = factor
        self.baseline_token_id = baseline_token_id
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.knn_backend = knn_backend
        self.convention = convention
        self.last_n_points: int | None = None

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs=None,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int | None = None,
        method: str | None = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        *,
        input_ids: torch.Tensor | None = None,
        baseline_ids=None,
        show_progress: bool = False,
    ):
        """Attributions ``[B, L, D]`` of the word embeddings (with ``return_convergence_delta``,
        also the per-example ``sum(attributions) - (F(input) - F(baseline))``).

        ``inputs``: token ids ``[B, L]``, or their word embeddings ``[B, L, D]`` together with
        ``input_ids``. ``baselines`` / ``baseline_ids``: the baseline word(s), an id or ids (default
        ``baseline_token_id``). ``method`` (as inseq names it) overrides ``strategy`` for this call,
        ``n_steps`` the constructor's.
        """
        input_ids = self._input_ids(inputs, input_ids)
        if baselines is not None and baseline_ids is not None:
            raise ValueError("pass the baseline as baselines or as baseline_ids, not both")
        baseline = baseline_ids if baseline_ids is not None else baselines
        found = dig_attribute_embeddings(
            self.forward_func, input_ids, self.embedding_matrix,
            self.baseline_token_id if baseline is None else baseline,
            target=target, additional_forward_args=additional_forward_args,
            strategy=self.strategy if method is None else method,
            n_steps=self.n_steps if n_steps is None else n_steps, n_neighbors=self.n_neighbors,
            factor=self.factor, special_token_ids=self.special_token_ids,
            internal_batch_size=internal_batch_size, return_convergence_delta=return_convergence_delta,
            knn_backend=self.knn_backend, convention=self.convention, dtype=self.dtype,
            show_progress=show_progress,
        )
        self.last_n_points = found.n_points
        if return_convergence_delta:
            return found.attributions, found.convergence_delta
        return found.attributions

    def _input_ids(self, inputs, input_ids) -> torch.Tensor:
        if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
            if input_ids is not None:
                raise ValueError("inputs are already token ids; do not pass input_ids as well")
            return _ids("inputs", inputs, self.embedding_matrix)
        if input_ids is None:
            raise ValueError("DIG needs the token ids: pass them as inputs, or as input_ids with the embeddings")
        input_ids = _ids("input_ids", input_ids, self.embedding_matrix)
        if inputs is not None:
            if not isinstance(inputs, torch.Tensor):
                raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
            words = self.embedding_matrix.detach()[input_ids]
            if inputs.shape != words.shape or not torch.allclose(inputs.detach().to(words.dtype), words):
                raise ValueError(
                    "inputs must be the word embeddings of input_ids (embedding_matrix[input_ids], shape "
                    f"{tuple(words.shape)}); got other values: pass the (scaled) matrix the forward receives rows of"
                )
        return input_ids
