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

import torch
from tqdm.auto import tqdm

from saliency_fast import ops
from saliency_fast.hf.explainer import NonFiniteAttributionError, _eager_attention
from saliency_fast.hf.lm_head import CausalLMScorer


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
    max_batch_tokens: int = 8192
    target_batch_size: int = 16
    progress: bool = False
    _bar: tqdm | None = dataclasses.field(default=None, init=False, repr=False)

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

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.embeds.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def progress_bar(self, total: int, desc: str):
        with tqdm(total=total, desc=desc, unit="batch", disable=not self.progress or total <= 1) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def scores(self, points: torch.Tensor, chunk: Chunk | None = None) -> torch.Tensor:
        """Target scores ``[B, T_chunk]`` of ``points`` (``[B, L, D]``); the whole set when no chunk."""
        sl = slice(None) if chunk is None else slice(chunk.start, chunk.end)
        with self.autocast():
            out = self.scorer.scores(points, self.positions[sl], self.token_ids[sl], self.target)
        return out.float()

    def gradients(self, points: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        """``d score_i / d points`` for every target ``i`` of ``chunk``: ``[T_chunk, B, L, D]``.

        One forward for the batch of points; the backward of all targets at once (batched
        grad_outputs, one one-hot per target), w.r.t. the points only.
        """
        points = points.detach().requires_grad_(True)
        scores = self.scores(points, chunk)
        n = scores.shape[1]
        if n == 1:
            (grads,) = torch.autograd.grad(scores.sum(), points)
            grads = grads.unsqueeze(0)
        else:
            one_hot = torch.eye(n, dtype=scores.dtype, device=scores.device).unsqueeze(1).repeat(1, scores.shape[0], 1)
            (grads,) = torch.autograd.grad(scores, points, one_hot, is_grads_batched=True)
        if not bool(torch.isfinite(grads).all()):
            raise NonFiniteAttributionError(
                "gradients became NaN/inf (half-precision overflow or a NaN in the model); "
                "try dtype=None (float32) or another target"
            )
        if self._bar is not None:
            self._bar.update(1)
        return grads


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
        """Unreduced ``[T_chunk, L, D]`` attributions of the chunk's targets over its prefix."""
        inputs = self.embeds[: chunk.length].float().expand_as(attributions)
        values = attributions if self.aggregate == "none" else self._reduce(attributions, self.aggregate, inputs)
        self.put_values(chunk, values)

    def put_values(self, chunk: Chunk, values: torch.Tensor) -> None:
        """Per-token values ``[T_chunk, L]`` (already reduced, or kept ``[.., D]`` for ``none``)."""
        self.values[chunk.start : chunk.end, : values.shape[1]] = values.detach().float().cpu()


def saliency(cp: CausalPass, board: ScoreBoard, times_input: bool = False) -> None:
    """Gradient (``times_input``: gradient x input) of every target w.r.t. its prefix."""
    chunks = cp.chunks(rows=1)
    with cp.progress_bar(len(chunks), "input_x_gradient" if times_input else "saliency"):
        for chunk in chunks:
            x = cp.embeds[: chunk.length]
            grads = cp.gradients(x.unsqueeze(0), chunk)[:, 0].float()
            board.put(chunk, grads * x.float() if times_input else grads)


def integrated_gradients(
    cp: CausalPass, board: ScoreBoard, baseline: torch.Tensor, alphas: torch.Tensor, weights: torch.Tensor,
    steps_per_batch: int,
) -> torch.Tensor:
    """IG of every target over its prefix (points ``baseline + alpha_k (x - baseline)``, weights
    ``w_k``); returns each target's sum of attributions ``[T]`` (for the completeness check).

    Per chunk the unreduced attribution is accumulated in float32 by :func:`ops.ig_accumulate_`
    step batch by step batch, so memory does not grow with ``n_steps``.
    """
    steps_per_batch = max(1, min(steps_per_batch, len(alphas)))
    chunks = cp.chunks(rows=steps_per_batch)
    n_batches = -(-len(alphas) // steps_per_batch)
    totals = torch.zeros(cp.n_targets, dtype=torch.float32)
    with cp.progress_bar(len(chunks) * n_batches, "integrated_gradients"):
        for chunk in chunks:
            x, b = cp.embeds[: chunk.length], baseline[: chunk.length]
            acc = torch.zeros((chunk.size, *x.shape), dtype=torch.float32, device=x.device)
            for k in range(0, len(alphas), steps_per_batch):
                a, w = alphas[k : k + steps_per_batch], weights[k : k + steps_per_batch]
                grads = cp.gradients(ops.ig_interpolate(x, b, a.to(x.dtype)), chunk)
                with torch.no_grad():
                    for i in range(chunk.size):
                        ops.ig_accumulate_(acc[i], grads[i], w.to(x.dtype), x, b)
            totals[chunk.start : chunk.end] = acc.sum((1, 2)).cpu()
            board.put(chunk, acc)
    return totals


def noise_tunnel(
    cp: CausalPass, board: ScoreBoard, noise: torch.Tensor, samples_per_batch: int, kind: str
) -> None:
    """SmoothGrad (mean of the gradients at noisy copies) or VarGrad (their variance) of every
    target; ``noise`` is ``[n_samples, N, D]``, sample ``k`` of a target's prefix is ``noise[k, :L]``."""
    n_samples = noise.shape[0]
    samples_per_batch = max(1, min(samples_per_batch, n_samples))
    chunks = cp.chunks(rows=samples_per_batch)
    with cp.progress_bar(len(chunks) * -(-n_samples // samples_per_batch), kind):
        for chunk in chunks:
            x = cp.embeds[: chunk.length]
            total = torch.zeros((chunk.size, *x.shape), dtype=torch.float32, device=x.device)
            squares = torch.zeros_like(total) if kind == "vargrad" else None
            for k in range(0, n_samples, samples_per_batch):
                grads = cp.gradients(x + noise[k : k + samples_per_batch, : chunk.length], chunk).float()
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
    model = cp.scorer.model
    with _eager_attention(model), torch.inference_mode(), cp.autocast():
        out = model(inputs_embeds=cp.embeds[:length].unsqueeze(0), output_attentions=True, use_cache=False)
    attentions = getattr(out, "attentions", None)
    if not attentions:
        raise ValueError(f"method 'attention': {type(model).__name__} returns no attention weights")
    per_layer = torch.stack([a[0].float().mean(0)[cp.positions] for a in attentions], dim=1)  # [T, layers, L]
    board.put_values(Chunk(0, cp.n_targets, length), per_layer[:, -1] if layers == "last" else per_layer.mean(1))
    return per_layer.cpu()
