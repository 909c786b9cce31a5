"""The single causal pass: every generated token of a sequence attributed from shared forwards.

A causal LM's output at position ``p`` depends only on tokens ``<= p``, so the scores of all
generated tokens can be read from one forward over the full sequence: the token at position ``t``
is scored from position ``t - 1``. Attribution then needs one backward per target, which we batch:

- targets are grouped into chunks of neighbouring positions, and each chunk runs on its own prefix
  (``positions[-1] + 1`` tokens), so early targets never pay for the long tail (truncated backward);
- within a chunk, one forward over a batch of points (the input, interpolation steps, noisy copies)
  serves every target, and the backward for all targets runs at once (``is_grads_batched``);
- chunks are sized by a token budget (targets x points x prefix length), which bounds memory for
  long sequences: points and targets are both chunked.

The per-target results equal running each prefix separately (the naive loop peers run), up to
floating-point summation order.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch
from tqdm.auto import tqdm

from saliency_fast import ops
from saliency_fast.methods import integrated_gradients as ig
from saliency_fast.hf.checks import NonFiniteAttributionError, eager_attention
from saliency_fast.hf import decoder_pass
from saliency_fast.hf.lm_head import CausalLMScorer


# Token rows (targets x points x prefix tokens) per batched backward in float32. Small enough that a
# layer's widest intermediate (rows x 4D floats: 24 MiB for GPT-2-small) stays below glibc's 32 MiB
# mmap threshold: larger blocks are mapped and unmapped on every allocation, and the page faults of
# touching them again cost 20-25 % of the run (measured on generation IG, 16 + 16 tokens); the
# matmuls are already large enough at this size. Half-precision runs take as many bytes, so twice
# the rows (see :func:`default_max_batch_tokens`).
DEFAULT_MAX_BATCH_TOKENS = 2048


# Targets whose full-vocabulary logits the head computes at once (GPT-2-small: 64 x 50,257 floats,
# 13 MB), so the head's memory stays bounded however many targets share its gradients.
HEAD_BLOCK_TARGETS = 64


def default_max_batch_tokens(dtype: torch.dtype | None) -> int:
    """The token budget for autocast ``dtype`` (None: float32): the float32 budget's bytes, so
    bf16/fp16 get twice the rows. GPT-2-small generation IG in bf16, 32 + 64 tokens: 2 points per
    forward instead of 1, fewer forwards and larger backward matmuls, 53-55 s -> 42-46 s."""
    return DEFAULT_MAX_BATCH_TOKENS * 4 // (4 if dtype is None else dtype.itemsize)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Targets ``start:end`` (by index), attributed on the prefix of ``length`` tokens."""

    start: int
    end: int
    length: int

    @property
    def size(self) -> int:
        return self.end - self.start


def plan_chunks(positions: list[int], rows: int, max_batch_tokens: int, max_targets: int) -> list[Chunk]:
    """Consecutive target chunks, each as large as ``size * rows * prefix_length <= max_batch_tokens``
    and ``size <= max_targets`` allow (at least one target). ``positions`` must be increasing."""
    chunks, start = [], 0
    while start < len(positions):
        end = start + 1
        while (
            end < len(positions)
            and end - start < max_targets
            and (end + 1 - start) * rows * (positions[end] + 1) <= max_batch_tokens
        ):
            end += 1
        chunks.append(Chunk(start, end, positions[end - 1] + 1))
        start = end
    return chunks


@dataclasses.dataclass
class CausalPass:
    """One sequence to attribute: word embeddings ``[N, D]`` and the targets read from it.

    ``positions[i]`` is where target ``i`` is scored (one before its own position) and
    ``token_ids[i]`` the token it scores; ``target`` the score kind (``logit``, ``prob``, ...).
    ``dtype`` (e.g. ``torch.bfloat16``) runs the model under autocast; gradients and every
    accumulation stay float32.
    """

    scorer: CausalLMScorer
    embeds: torch.Tensor
    positions: torch.Tensor
    token_ids: torch.Tensor
    target: str
    dtype: torch.dtype | None = None
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    target_batch_size: int = 16
    progress: bool = False
    # False: autograd always (the described pass would bypass rules put on the model's modules, LRP's)
    described_pass: bool = True
    _bar: tqdm | None = dataclasses.field(default=None, init=False, repr=False)
    # which gradient pass ran and why (metadata["engine"]); None until a gradient method selects one
    engine_info: dict | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def n_targets(self) -> int:
        return int(self.positions.shape[0])

    @property
    def prefix_length(self) -> int:
        """Tokens any target reads (the last token is only ever a target)."""
        return int(self.positions[-1]) + 1

    def chunks(self, rows: int) -> list[Chunk]:
        """Target chunks for ``rows`` points per forward."""
        return plan_chunks(self.positions.tolist(), rows, self.max_batch_tokens, self.target_batch_size)

    def select_engine(self, n_points: int) -> decoder_pass.Selection:
        """The described pass (:mod:`saliency_fast.hf.decoder_pass`) for ``n_points`` points over the
        sequence where the model takes it, else autograd, and why (kept for ``metadata["engine"]``)."""
        if not self.described_pass:
            found = decoder_pass.Selection(None, "rules put on the model's modules (LRP) need autograd")
        elif not self.scorer.splits:
            found = decoder_pass.Selection(None, "the model's own forward runs (lm_head='full', an encoder-decoder "
                                                 "model, or head(body(x)) does not give the model's logits)")
        else:
            found = decoder_pass.select(self.scorer.model, n_points, self.prefix_length, self.dtype)
        self.engine_info = found.metadata()
        return found

    def targets_per_backward(self, n_points: int) -> int:
        """The most targets one backward takes when ``n_points`` points are attributed."""
        if self.select_engine(n_points).engine is None:
            return self.target_batch_size
        return min(self.target_batch_size, decoder_pass.TARGETS_PER_CHUNK)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.embeds.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def progress_bar(self, total: int | None, desc: str):
        """A bar over gradient batches (``total=None``: not known in advance)."""
        quiet = not self.progress or (total is not None and total <= 1)
        with tqdm(total=total, desc=desc, unit="batch", disable=quiet) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def _targets(self, chunk: Chunk | None, subset: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        positions, token_ids = self.positions, self.token_ids
        if chunk is not None:
            positions, token_ids = positions[chunk.start : chunk.end], token_ids[chunk.start : chunk.end]
        if subset is not None:
            positions, token_ids = positions[subset], token_ids[subset]
        return positions, token_ids

    def scores(self, points: torch.Tensor, chunk: Chunk | None = None, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Target scores ``[B, T_chunk]`` of ``points`` (``[B, L, D]``); the whole set when no chunk,
        only the targets ``subset`` (indices within the chunk) when given."""
        with self.autocast():
            out = self.scorer.scores(points, *self._targets(chunk, subset), self.target)
        return out.float()

    def gradients(self, points: torch.Tensor, chunk: Chunk, subset: torch.Tensor | None = None,
                  shared_heads: SharedHeadGradients | None = None) -> torch.Tensor:
        """``d score_i / d points`` for every target ``i`` of ``chunk`` (or of its ``subset``):
        ``[T_chunk, B, L, D]``.

        One forward for the batch of points, then the backward of all targets at once. When the
        scorer splits body and head, the head's gradients come first (:meth:`head_gradients`, or
        from ``shared_heads`` when every chunk runs on the same points), and the batched backward
        starts at the hidden states, seeded with target ``i``'s head gradient at its position: the
        head is never back-propagated once per target (for ``prob`` targets that would be
        ``T x T x V x D`` work per chunk).
        """
        points = points.detach().requires_grad_(True)
        if not self.scorer.splits:
            (grads,) = self.target_gradients(self.scores(points, chunk, subset), (points,))
            return grads
        positions, token_ids = self._targets(chunk, subset)
        sharing = shared_heads is not None and subset is None
        # the rows whose hidden states are read: the whole set's when the shared head gradients come next
        rows = self.positions if sharing and shared_heads.pending(self, points.shape[1]) else positions
        with self.autocast():
            hidden = self.scorer.hidden(points, rows=rows)
        head_grads = shared_heads.take(self, hidden, chunk) if sharing else None
        if head_grads is None:
            head_grads = self.head_gradients(hidden[:, positions], token_ids)
        seeds = hidden.new_zeros((positions.shape[0], *hidden.shape))
        seeds[torch.arange(positions.shape[0], device=seeds.device), :, positions] = head_grads.transpose(0, 1)
        return self._batched_backward(hidden, (points,), seeds)[0]

    def head_gradients(self, at_targets: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """``d score_i / d hidden_i`` ``[B, T, D]`` from the hidden states at the targets' positions
        (``[B, T, D]``), by one plain backward: score ``i`` reads only ``hidden_i``, so the gradient
        of the scores' sum holds every target's."""
        blocks = []
        for start in range(0, at_targets.shape[1], HEAD_BLOCK_TARGETS):  # [B, block, V] logits at a time
            block = at_targets[:, start : start + HEAD_BLOCK_TARGETS].detach().requires_grad_(True)
            with torch.enable_grad(), self.autocast():
                scores = self.scorer.head_scores(block, token_ids[start : start + HEAD_BLOCK_TARGETS], self.target)
            blocks.append(torch.autograd.grad(scores.sum(), block)[0])
        return torch.cat(blocks, dim=1)

    def total_change(self, baseline: torch.Tensor) -> torch.Tensor:
        """``F(x) - F(baseline)`` of every target ``[T]`` (float32, CPU), at full precision as the
        completeness check of path methods wants it."""
        length = self.prefix_length
        with torch.no_grad():
            ends = self.scorer.scores(
                torch.stack([self.embeds[:length], baseline[:length]]), self.positions, self.token_ids, self.target
            ).float()
        change = (ends[0] - ends[1]).cpu()
        if not bool(torch.isfinite(change).all()):
            raise NonFiniteAttributionError("F(x) - F(baseline) is not finite (NaN/inf in the model's scores)")
        return change

    def target_gradients(self, scores: torch.Tensor, wrt: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``d scores[:, i] / d w`` for every target column ``i`` of ``scores`` (``[B, T_chunk]``) and
        every tensor ``w`` of ``wrt`` (the points, or activations inside the model): ``[T_chunk, *w.shape]``
        each, from one backward for all targets (batched grad_outputs, one one-hot per target)."""
        n = scores.shape[1]
        one_hot = torch.eye(n, dtype=scores.dtype, device=scores.device).unsqueeze(1).repeat(1, scores.shape[0], 1)
        return self._batched_backward(scores, wrt, one_hot)

    def _batched_backward(self, outputs: torch.Tensor, wrt: tuple[torch.Tensor, ...], seeds: torch.Tensor):
        """``grad(outputs, wrt, seeds[i])`` for every ``i``, in one batched backward."""
        if seeds.shape[0] == 1:
            grads = tuple(g.unsqueeze(0) for g in torch.autograd.grad(outputs, wrt, seeds[0]))
        else:
            grads = torch.autograd.grad(outputs, wrt, seeds, is_grads_batched=True)
        return self.checked(*grads)

    def checked(self, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The gradients of one backward, when all are finite (the progress bar counts it)."""
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise NonFiniteAttributionError(
                "gradients became NaN/inf (half-precision overflow or a NaN in the model); "
                "try dtype=None (float32) or another target"
            )
        if self._bar is not None:
            self._bar.update(1)
        return grads


class SharedHeadGradients:
    """The head gradients of every target, from the first forward that reaches the last target,
    for chunks that all run on the same points (saliency's input): by causality each target's
    hidden state there is the one of its own prefix, so the head's weights (``prob`` on GPT-2-small:
    154 MB, streamed forward and backward) are read once instead of once per chunk."""

    def __init__(self):
        self._grads: torch.Tensor | None = None

    def pending(self, cp: CausalPass, length: int) -> bool:
        """Whether a forward over ``length`` tokens is the one that gives them."""
        return self._grads is None and length >= cp.prefix_length

    def take(self, cp: CausalPass, hidden: torch.Tensor, chunk: Chunk) -> torch.Tensor | None:
        """``[B, T_chunk, D]`` for ``chunk``; None until a forward over the whole prefix was seen."""
        if self.pending(cp, hidden.shape[1]):
            self._grads = cp.head_gradients(hidden[:, cp.positions], cp.token_ids)
        return None if self._grads is None else self._grads[:, chunk.start : chunk.end]


class ScoreBoard:
    """Collects per-chunk attributions into ``[T, N]`` (``[T, N, D]`` for ``aggregate="none"``),
    reducing the embedding dim chunk by chunk so only one chunk is ever held unreduced.
    ``aggregate=None``: the method gives one number per token already (occlusion, attention)."""

    def __init__(self, n_targets: int, embeds: torch.Tensor, aggregate: str | None, reduce):
        self.embeds = embeds
        self.aggregate = aggregate
        self._reduce = reduce
        shape = (n_targets, embeds.shape[0]) + ((embeds.shape[1],) if aggregate == "none" else ())
        self.values = torch.full(shape, float("nan"), dtype=torch.float32)

    def put(self, chunk: Chunk, attributions: torch.Tensor) -> None:
        """Unreduced ``[T_chunk, L, D]`` attributions of the chunk's targets over its prefix (the
        first ``L`` of the board's rows)."""
        inputs = self.embeds[: attributions.shape[1]].float().expand_as(attributions)
        values = attributions if self.aggregate == "none" else self._reduce(attributions, self.aggregate, inputs)
        self.put_values(chunk, values)

    def put_values(self, chunk: Chunk, values: torch.Tensor) -> None:
        """Per-token values ``[T_chunk, L]`` (already reduced, or kept ``[.., D]`` for ``none``)."""
        self.values[chunk.start : chunk.end, : values.shape[1]] = values.detach().float().cpu()


class PointGradients:
    """``d score_i / d points`` of every target ``i`` over fixed batches of points, chunk of targets
    by chunk: batch ``k`` is ``points(k)`` (``[sizes[k], N, D]``: the input, path points, noisy
    copies), made when needed; each chunk reads its first ``chunk.length`` tokens.

    The described pass (:mod:`saliency_fast.hf.decoder_pass`) where the model takes it: one forward
    per batch over the whole sequence, kept, then a backward per chunk of a few targets. Else
    autograd (:meth:`CausalPass.gradients`): a forward per chunk and batch on the chunk's prefix;
    with a single batch (saliency) chunks run longest first, and that forward gives every target's
    head gradients (:class:`SharedHeadGradients`).
    """

    def __init__(self, cp: CausalPass, sizes: list[int], points: Callable[[int], torch.Tensor]):
        self.cp, self.sizes, self.points = cp, sizes, points
        self.engine = cp.select_engine(sum(sizes)).engine
        self._shared_heads = SharedHeadGradients() if len(sizes) == 1 and self.engine is None else None
        self._states, self._heads = [], []

    def chunks(self) -> list[Chunk]:
        rows = max(self.sizes)
        if self.engine is None:
            chunks = self.cp.chunks(rows)
            return chunks[::-1] if self._shared_heads is not None else chunks
        most = self.cp.targets_per_backward(sum(self.sizes))
        return plan_chunks(self.cp.positions.tolist(), rows, self.cp.max_batch_tokens, most)

    def __call__(self, chunk: Chunk, k: int) -> torch.Tensor:
        """``[T_chunk, S_k, chunk.length, D]`` for batch ``k``."""
        if self.engine is None:
            return self.cp.gradients(self.points(k)[:, : chunk.length], chunk, shared_heads=self._shared_heads)
        if not self._states:  # every batch's forward and head gradients, once
            weights = self.engine.weights(self.cp.dtype)
            for j in range(len(self.sizes)):
                state = self.engine.forward(self.points(j)[:, : self.cp.prefix_length], weights)
                self._states.append(state)
                self._heads.append(self.cp.head_gradients(state.hidden[:, self.cp.positions], self.cp.token_ids))
        targets = slice(chunk.start, chunk.end)
        grads = self.engine.backward(self._states[k], self.cp.positions[targets], self._heads[k][:, targets])
        return self.cp.checked(grads)[0]


def _batches(n: int, per_batch: int) -> list[tuple[int, int]]:
    """``(start, size)`` of consecutive batches of at most ``per_batch`` of ``n`` points."""
    return [(start, min(per_batch, n - start)) for start in range(0, n, per_batch)]


def _slice(batch: tuple[int, int]) -> slice:
    return slice(batch[0], batch[0] + batch[1])


def saliency(cp: CausalPass, board: ScoreBoard, times_input: bool = False, desc: str | None = None) -> torch.Tensor:
    """Gradient (``times_input``: gradient x input) of every target w.r.t. its prefix; returns each
    target's sum of attributions ``[T]`` (float32, CPU)."""
    x = cp.embeds[: cp.prefix_length]
    gradients = PointGradients(cp, [1], lambda k: x.unsqueeze(0))
    chunks = gradients.chunks()
    sums = torch.zeros(cp.n_targets, dtype=torch.float32)
    with cp.progress_bar(len(chunks), desc or ("input_x_gradient" if times_input else "saliency")):
        for chunk in chunks:
            grads = gradients(chunk, 0)[:, 0].float()
            attributions = grads * x[: chunk.length].float() if times_input else grads
            sums[chunk.start : chunk.end] = attributions.sum((1, 2)).cpu()
            board.put(chunk, attributions)
    return sums


@dataclasses.dataclass
class PathRule:
    """A fixed quadrature rule (``alphas``, ``weights``) or, with ``levels``, the nested rules of
    ``n_steps="auto"`` (stop per target once ``|delta| <= atol + rtol |F(x) - F(b)|``)."""

    alphas: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    levels: tuple | None = None
    rtol: float = 0.01
    atol: float = 0.0


def integrated_gradients(
    cp: CausalPass, board: ScoreBoard, baseline: torch.Tensor, rule: PathRule, steps_per_batch: int
) -> ig.AdaptiveResult:
    """IG of every target over its prefix, path ``baseline + alpha (x - baseline)``.

    A fixed rule: every target of a chunk shares each path point, so the path's batches of points
    serve every chunk (:class:`PointGradients`). ``n_steps="auto"``: the adaptive loop of
    :mod:`saliency_fast.methods.integrated_gradients` per target chunk, with the chunk's targets as
    its examples (:func:`_shared_point_gradients`). Returns per target the path points used, the
    signed completeness error and whether it converged (``attributions`` left empty: they went to
    ``board``).
    """
    change = cp.total_change(baseline)
    if rule.levels is None:
        n = len(rule.alphas)
        delta = _fixed_rule_integrated_gradients(cp, board, baseline, rule, max(1, min(steps_per_batch, n))) - change
        return ig.AdaptiveResult((), torch.full((cp.n_targets,), n), delta, torch.ones(cp.n_targets, dtype=torch.bool))
    delta = torch.zeros(cp.n_targets, dtype=torch.float32)
    n_steps = torch.zeros(cp.n_targets, dtype=torch.long)
    converged = torch.ones(cp.n_targets, dtype=torch.bool)
    with cp.progress_bar(None, "integrated_gradients"):
        for chunk in cp.chunks(rows=steps_per_batch):
            rows = slice(chunk.start, chunk.end)
            # the chunk's targets are the examples: the same prefix and baseline for each
            x = cp.embeds[: chunk.length].expand(chunk.size, -1, -1).contiguous()
            b = baseline[: chunk.length].expand(chunk.size, -1, -1).contiguous()
            found = ig.integrate_path_adaptive(
                _shared_point_gradients(cp, chunk), (x,), (b,), change[rows].to(x.device), rule.levels,
                rtol=rule.rtol, atol=rule.atol, internal_batch_size=steps_per_batch * chunk.size,
            )
            (attributions,) = found.attributions
            delta[rows], n_steps[rows], converged[rows] = found.delta.cpu(), found.n_steps.cpu(), found.converged.cpu()
            board.put(chunk, attributions)
    return ig.AdaptiveResult((), n_steps, delta, converged)


def _fixed_rule_integrated_gradients(cp: CausalPass, board: ScoreBoard, baseline: torch.Tensor, rule: PathRule,
                                     steps_per_batch: int) -> torch.Tensor:
    """IG of a fixed rule, ``steps_per_batch`` path points at a time; returns every target's sum of
    attributions ``[T]``."""
    x, b = cp.embeds[: cp.prefix_length], baseline[: cp.prefix_length]
    batches = _batches(len(rule.alphas), steps_per_batch)
    gradients = PointGradients(cp, [size for _, size in batches],
                               lambda j: ops.ig_interpolate(x, b, rule.alphas[_slice(batches[j])]))
    sums = torch.zeros(cp.n_targets, dtype=torch.float32)
    chunks = gradients.chunks()
    with cp.progress_bar(len(chunks) * len(batches), "integrated_gradients"):
        for chunk in chunks:
            shape = (chunk.size, chunk.length, x.shape[-1])
            xs, bs = x[: chunk.length].expand(shape), b[: chunk.length].expand(shape)
            acc = torch.zeros(shape, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype, device=x.device)
            for j, batch in enumerate(batches):
                grads = gradients(chunk, j).to(x.dtype).transpose(0, 1)  # [S_j, T_chunk, L, D]
                ops.ig_accumulate_(acc, grads, rule.weights[_slice(batch)].to(x.dtype), xs, bs)
            sums[chunk.start : chunk.end] = acc.sum((1, 2)).cpu()
            board.put(chunk, acc)
    return sums


def _shared_point_gradients(cp: CausalPass, chunk: Chunk) -> ig.GradientFn:
    """A gradient function (see :mod:`saliency_fast.methods.integrated_gradients`) whose examples are
    the targets of ``chunk``: their path points coincide, so only the first example's points go
    through the model, and one batched backward gives every target's gradients."""

    def gradients(points, n_points: int, examples: torch.Tensor | None):
        (flat,) = points  # [n_points * n_examples, L, D], point-major
        n_examples = flat.shape[0] // n_points
        shared = flat.view(n_points, n_examples, *flat.shape[1:])[:, 0]
        grads = cp.gradients(shared, chunk, examples)  # [n_examples, n_points, L, D]
        return (grads.transpose(0, 1).reshape(flat.shape),)

    return gradients


def discretized_integrated_gradients(cp: CausalPass, board: ScoreBoard, paths: torch.Tensor, steps_per_batch: int):
    """DIG of every target: ``sum_k grad(p_k) * (p_{k+1} - p_k)`` along the word paths ``paths``
    (``[P, N, D]``, ``p_0`` the baseline, ``p_{P-1}`` the input; see :mod:`saliency_fast.methods.dig`).

    Every token walks its own path, independent of the others, so a target's prefix path is the
    prefix of the sequence's: each batch of path points serves every chunk of targets.
    Returns the signed completeness error of every target ``[T]``.
    """
    change = cp.total_change(paths[0])
    delta = torch.zeros(cp.n_targets, dtype=torch.float32)
    n_steps = paths.shape[0] - 1  # no gradient at the input: its step is zero
    steps_per_batch = max(1, min(steps_per_batch, n_steps))
    batches = _batches(n_steps, steps_per_batch)
    gradients = PointGradients(cp, [size for _, size in batches], lambda j: paths[_slice(batches[j])])
    chunks = gradients.chunks()
    with cp.progress_bar(len(chunks) * len(batches), "discretized_integrated_gradients"):
        for chunk in chunks:
            acc = torch.zeros((chunk.size, chunk.length, paths.shape[-1]), dtype=torch.float32, device=paths.device)
            for j, (k, size) in enumerate(batches):
                grads = gradients(chunk, j).float()
                with torch.no_grad():
                    segment = paths[k : k + size + 1, : chunk.length].float()
                    acc += (grads * (segment[1:] - segment[:-1])).sum(1)
            delta[chunk.start : chunk.end] = acc.sum((1, 2)).cpu() - change[chunk.start : chunk.end]
            board.put(chunk, acc)
    return delta


def noise_tunnel(
    cp: CausalPass, board: ScoreBoard, noise: torch.Tensor, samples_per_batch: int, kind: str
) -> None:
    """SmoothGrad (mean of the gradients at noisy copies) or VarGrad (their variance) of every
    target; ``noise`` is ``[n_samples, N, D]``, sample ``k`` of a target's prefix is ``noise[k, :L]``."""
    n_samples = noise.shape[0]
    samples_per_batch = max(1, min(samples_per_batch, n_samples))
    x = cp.embeds[: cp.prefix_length]
    batches = _batches(n_samples, samples_per_batch)
    gradients = PointGradients(cp, [size for _, size in batches],
                               lambda j: x + noise[_slice(batches[j]), : cp.prefix_length])
    chunks = gradients.chunks()
    with cp.progress_bar(len(chunks) * len(batches), kind):
        for chunk in chunks:
            total = torch.zeros((chunk.size, chunk.length, x.shape[-1]), dtype=torch.float32, device=x.device)
            squares = torch.zeros_like(total) if kind == "vargrad" else None
            for j in range(len(batches)):
                grads = gradients(chunk, j).float()
                total += grads.sum(1)
                if squares is not None:
                    squares += grads.square().sum(1)
            mean = total / n_samples
            board.put(chunk, mean if squares is None else squares / n_samples - mean.square())


def occlusion(
    cp: CausalPass, board: ScoreBoard, baseline: torch.Tensor, keep: torch.Tensor, perturbations_per_eval: int
) -> None:
    """Leave-one-out: ``score(x) - score(x with token j set to the baseline)`` for every earlier
    token ``j`` and every target, each forward scoring all targets of a batch of perturbed copies."""
    length = cp.prefix_length
    x, b = cp.embeds[:length], baseline[:length]
    columns = [j for j in range(length) if not bool(keep[j])]
    values = torch.full((cp.n_targets, length), float("nan"), dtype=torch.float32)
    batches = [columns[i : i + perturbations_per_eval] for i in range(0, len(columns), perturbations_per_eval)]
    with torch.inference_mode(), cp.progress_bar(len(batches), "occlusion"):
        reference = cp.scores(x.unsqueeze(0))[0]
        for cols in batches:
            index = torch.tensor(cols, device=x.device)
            copies = x.unsqueeze(0).repeat(len(cols), 1, 1)
            copies[torch.arange(len(cols), device=x.device), index] = b[index]
            changed = reference.unsqueeze(0) - cp.scores(copies)  # [P, T]
            values[:, cols] = changed.T.cpu()
            if cp._bar is not None:
                cp._bar.update(1)
    board.put_values(Chunk(0, cp.n_targets, length), values)


def attention(cp: CausalPass, board: ScoreBoard, layers: str) -> torch.Tensor:
    """Attention paid by each target's scoring position to every token (heads averaged): the last
    layer (``"last"``) or the mean over layers (``"mean"``); returns every layer ``[T, layers, L]``."""
    length = cp.prefix_length
    with eager_attention(cp.scorer.model), torch.inference_mode(), cp.autocast():
        per_layer = cp.scorer.attention_rows(cp.embeds[:length].unsqueeze(0), cp.positions)  # [T, layers, L]
    board.put_values(Chunk(0, cp.n_targets, length), per_layer[:, -1] if layers == "last" else per_layer.mean(1))
    return per_layer.cpu()
