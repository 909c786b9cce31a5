"""The building blocks of decoder-only transformers, each with a forward that keeps what its backward
reads and a backward batched over targets: projections, LayerNorm and RMSNorm, rotary embeddings,
grouped-query attention, plain and gated MLPs.

A family (``saliency_fast/hf/families/``) describes its model with these blocks; one pass
(:mod:`saliency_fast.hf.decoder_pass`) runs the forward once per batch of points ``[S, L, D]`` and
the backward for a batch of targets. Shapes: a forward's state is ``[S, L, ...]`` (every point,
every row); a backward takes gradients ``[T, S, Lc, ...]`` (``T`` targets over the first ``Lc``
rows, read against the state cropped to ``Lc`` rows) or ``[T, S, ...]`` (one row per target, read
against the state at the targets' rows, :func:`at_rows`). Matmuls run in the weights' dtype (bf16
weights: as under autocast), norms, softmax and the residual stream in the input's float dtype.
"""

from __future__ import annotations

import dataclasses

import torch

from saliency_fast.methods import lean_backward


def crop(state, length: int):
    """A state (a dataclass of ``[S, L, ...]`` tensors) cut to its first ``length`` rows."""
    return dataclasses.replace(state, **{f.name: _map(getattr(state, f.name), lambda t: t[:, :length])
                                         for f in dataclasses.fields(state)})


def at_rows(state, positions: torch.Tensor):
    """A state at each target's row, target-major: ``[T, S, ...]``."""
    return dataclasses.replace(state, **{f.name: _map(getattr(state, f.name),
                                                      lambda t: t.index_select(1, positions).movedim(1, 0))
                                         for f in dataclasses.fields(state)})


def _map(value, fn):
    return fn(value) if isinstance(value, torch.Tensor) else value


# ------------------------------------------------------------------------------- projection


class TargetRows:
    """The rows a batch of target gradients ``[T, S, Lc, ...]`` can be nonzero at: target ``i`` at
    rows ``<= positions[i]`` (causality; the rest stay exactly zero). Matmuls over the gradients run
    on these rows only, packed (``[N, ...]``), so a chunk of targets does not pay for its padding to
    the longest prefix."""

    def __init__(self, positions: torch.Tensor, n_points: int, length: int):
        valid = torch.arange(length, device=positions.device) <= positions.unsqueeze(1)  # [T, Lc]
        self.index = valid.unsqueeze(1).expand(-1, n_points, -1).reshape(-1).nonzero().squeeze(1)
        self.state_index = self.index % (n_points * length)  # the packed rows' (point, row) in a state
        self.shape = (positions.shape[0], n_points, length)

    def pack(self, grad: torch.Tensor) -> torch.Tensor:
        """``[T, S, Lc, *rest]`` -> ``[N, *rest]``."""
        return grad.reshape(-1, *grad.shape[3:]).index_select(0, self.index)

    def pack_state(self, state: torch.Tensor) -> torch.Tensor:
        """A state ``[S, Lc, *rest]`` at the packed rows: ``[N, *rest]``."""
        return state.reshape(-1, *state.shape[2:]).index_select(0, self.state_index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[N, K]`` -> ``[T, S, Lc, K]``, zero at the other rows."""
        out = packed.new_zeros((self.shape[0] * self.shape[1] * self.shape[2], packed.shape[-1]))
        return out.index_copy_(0, self.index, packed).view(*self.shape, -1)

    def matmul(self, grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``grad @ weight`` for ``grad`` ``[T, S, Lc, K]``, computed at the valid rows only."""
        return self.unpack(self.pack(grad) @ weight)


@dataclasses.dataclass
class Projection:
    """``x @ W + b`` with ``W`` ``[in, out]`` (a Linear's weight transposed, a Conv1D's as it is)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def linear(cls, *modules) -> Projection:
        """One projection from nn.Linear modules side by side (q, k, v or gate, up: one matmul)."""
        weight = torch.cat([m.weight.detach() for m in modules], 0).T if len(modules) > 1 else modules[0].weight.detach().T
        biases = [m.bias for m in modules]
        if all(b is None for b in biases):
            return cls(weight)
        bias = torch.cat([b.detach() if b is not None else m.weight.new_zeros(m.weight.shape[0])
                          for b, m in zip(biases, modules)])
        return cls(weight, bias)

    def cast(self, dtype: torch.dtype | None) -> Projection:
        if dtype is None:
            return self
        return Projection(self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))

    @property
    def out_features(self) -> int:
        return self.weight.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(0, -2).to(self.weight.dtype)
        out = flat @ self.weight if self.bias is None else torch.addmm(self.bias, flat, self.weight)
        return out.view(*x.shape[:-1], -1)

    def input_grad(self, grad: torch.Tensor, columns: slice = slice(None), rows: TargetRows | None = None
                   ) -> torch.Tensor:
        """``grad @ W[:, columns].T``: one matmul over every leading dim (``rows``: the valid rows only)."""
        weight = self.weight[:, columns].T
        grad = grad.to(self.weight.dtype)
        return torch.matmul(grad, weight) if rows is None else rows.matmul(grad, weight)


# ------------------------------------------------------------------------------------ norms


@dataclasses.dataclass
class NormState:
    x: torch.Tensor
    mean: torch.Tensor | None
    rstd: torch.Tensor


@dataclasses.dataclass
class Norm:
    """LayerNorm (``bias`` may be None) or, with ``rms``, RMSNorm; ``weight`` is the effective scale
    (Gemma's ``1 + w`` already added), computed in float32 as transformers' RMSNorms are."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    rms: bool = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        shape = (x.shape[-1],)
        if not self.rms:
            y, mean, rstd = torch.native_layer_norm(x, shape, self.weight, self.bias, self.eps)
            return y, NormState(x, mean, rstd)
        xf = x.float()
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (xf * rstd * self.weight.float()).to(x.dtype), NormState(x, None, rstd)

    def backward(self, grad: torch.Tensor, state: NormState) -> torch.Tensor:
        """Input gradient for ``grad`` of the state's shape, or ``[T, *state shape]``."""
        if not self.rms:
            return self._layer_norm_backward(grad, state)
        x_hat = state.x.float() * state.rstd
        gw = grad.float() * self.weight.float()
        return (gw - x_hat * (gw * x_hat).mean(-1, keepdim=True)).mul_(state.rstd).to(state.x.dtype)

    def _layer_norm_backward(self, grad: torch.Tensor, state: NormState) -> torch.Tensor:
        # the native kernel reads the mean and 1 / std as flat arrays: contiguous, or it misreads them
        x, mean, rstd = (t.contiguous() for t in (state.x, state.mean, state.rstd))

        def one(g):
            return torch.ops.aten.native_layer_norm_backward(
                g.to(x.dtype).contiguous(), x, (x.shape[-1],), mean, rstd, self.weight, None, [True, False, False])[0]

        return one(grad) if grad.shape == x.shape else per_target(one, grad)


def per_target(backward, grad: torch.Tensor) -> torch.Tensor:
    """``backward(grad[t])`` for every target ``t``, stacked: the native backward kernels take one
    input shape, and one call per target beats the same arithmetic written as broadcast ops."""
    first = backward(grad[0])
    out = first.new_empty((grad.shape[0], *first.shape))
    out[0] = first
    for t in range(1, grad.shape[0]):
        out[t] = backward(grad[t])
    return out


def softmax_backward(grad: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Input gradient of a softmax over the last dim, for gradients as in :meth:`Norm.backward`."""
    probs = probs.contiguous()

    def one(g):
        return torch._softmax_backward_data(g.to(probs.dtype).contiguous(), probs, -1, probs.dtype)

    return one(grad) if grad.shape == probs.shape else per_target(one, grad)


# ---------------------------------------------------------------------------------- rotary


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb`` on ``[..., L, H, dh]`` (cos/sin ``[L, 1, r]``: the first
    ``r <= dh`` dims rotate, the rest pass, as with a partial rotary factor)."""
    if cos.shape[-1] < x.shape[-1]:
        rotated, passed = x.split([cos.shape[-1], x.shape[-1] - cos.shape[-1]], dim=-1)
        return torch.cat([rotary(rotated, cos, sin), passed], dim=-1)
    return x * cos + rotate_half(x) * sin


def rotary_backward(grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation's transpose: ``rotate_half``'s transpose is ``-rotate_half``."""
    if cos.shape[-1] < grad.shape[-1]:
        rotated, passed = grad.split([cos.shape[-1], grad.shape[-1] - cos.shape[-1]], dim=-1)
        return torch.cat([rotary_backward(rotated, cos, sin), passed], dim=-1)
    return grad * cos - rotate_half(grad * sin)


# ------------------------------------------------------------------------------- attention


@dataclasses.dataclass
class AttentionState:
    """Queries (rotated, scaled) ``[S, Hkv, G, L, dh]``, keys and values ``[S, Hkv, 1, L, dh]``,
    probabilities ``[S, Hkv, G, L, L]``, and the rows' rotary and query/key-norm states."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    probs: torch.Tensor
    cos: torch.Tensor | None
    sin: torch.Tensor | None
    q_norm: NormState | None
    k_norm: NormState | None


@dataclasses.dataclass
class Attention:
    """Causal self-attention: ``qkv`` one projection (queries, keys, values side by side), ``n_heads``
    query heads sharing ``n_kv_heads`` key/value heads (grouped-query), scores times ``scaling``,
    optional per-head RMSNorm of queries and keys (Qwen3), rotary embeddings when the pass passes
    cos/sin, and a sliding ``window`` (keys within ``window`` rows) when set."""

    qkv: Projection
    out: Projection
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float
    q_norm: Norm | None = None
    k_norm: Norm | None = None
    window: int | None = None

    def cast(self, dtype):
        return dataclasses.replace(self, qkv=self.qkv.cast(dtype), out=self.out.cast(dtype))

    @property
    def _group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None):
        s, length = x.shape[:2]
        hq, hkv, dh, g = self.n_heads, self.n_kv_heads, self.head_dim, self._group
        q, k, v = self.qkv(x).split([hq * dh, hkv * dh, hkv * dh], dim=-1)
        low = q.dtype
        q, k, v = q.unflatten(-1, (hq, dh)), k.unflatten(-1, (hkv, dh)), v.unflatten(-1, (hkv, dh))  # [S, L, H, dh]
        q_norm = k_norm = None
        if self.q_norm is not None:
            q, q_norm = self.q_norm.forward(q.to(x.dtype))
            k, k_norm = self.k_norm.forward(k.to(x.dtype))
        if cos is not None:
            q, k = rotary(q.to(x.dtype), cos, sin), rotary(k.to(x.dtype), cos, sin)
        q = (q * self.scaling).to(low).view(s, length, hkv, g, dh).permute(0, 2, 3, 1, 4)
        k = k.to(low).permute(0, 2, 1, 3).unsqueeze(2)
        v = v.to(low).permute(0, 2, 1, 3).unsqueeze(2)
        scores = torch.matmul(q, k.transpose(-1, -2)).to(x.dtype)
        scores = scores.masked_fill(~self._mask(length, x.device), torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).to(low)
        out = torch.matmul(probs, v).permute(0, 3, 1, 2, 4).flatten(2)  # [S, L, H dh]
        return self.out(out).to(x.dtype), AttentionState(q, k, v, probs, cos, sin, q_norm, k_norm)

    def _mask(self, length: int, device) -> torch.Tensor:
        rows = torch.arange(length, device=device)
        allowed = rows.unsqueeze(1) >= rows.unsqueeze(0)
        if self.window is not None:
            allowed &= rows.unsqueeze(1) - rows.unsqueeze(0) < self.window
        return allowed

    def backward(self, grad: torch.Tensor, state: AttentionState, rows: TargetRows) -> torch.Tensor:
        """Input gradient for gradients ``[T, S, Lc, D]`` of the output over the first ``Lc`` rows."""
        t, s, length = rows.shape
        hkv, g, dh = self.n_kv_heads, self._group, self.head_dim
        d_out = self.out.input_grad(grad, rows=rows).view(t, s, length, hkv, g, dh).permute(0, 1, 3, 4, 2, 5)
        probs = state.probs[..., :length, :length]
        q, k, v = (x[..., :length, :] for x in (state.q, state.k, state.v))
        d_scores = softmax_backward(torch.matmul(d_out, v.transpose(-1, -2)), probs).to(q.dtype)
        d_q = torch.matmul(d_scores, k)  # [T, S, Hkv, G, Lc, dh]
        d_k = torch.einsum("tshgqk,shgqd->tshkd", d_scores, q)
        d_v = torch.einsum("shgqk,tshgqd->tshkd", probs.to(d_out.dtype), d_out)
        d_q = d_q.permute(0, 1, 4, 2, 3, 5).flatten(3, 4)  # [T, S, Lc, H, dh]
        d_k, d_v = d_k.permute(0, 1, 3, 2, 4), d_v.permute(0, 1, 3, 2, 4)
        d_q, d_k = self._unrotate(d_q, d_k, state, length, None)
        d_qkv = torch.cat([d_q.flatten(-2), d_k.flatten(-2), d_v.flatten(-2).to(d_q.dtype)], dim=-1)
        return self.qkv.input_grad(d_qkv, rows=rows)

    def backward_at_rows(self, grad: torch.Tensor, state: AttentionState, positions: torch.Tensor,
                         rows: TargetRows) -> torch.Tensor:
        """Input gradient ``[T, S, Lc, D]`` for gradients ``[T, S, D]`` of the output at each target's
        row only: its query there, keys and values at every row up to ``Lc``."""
        t, s, length = rows.shape
        hq, hkv, g, dh = self.n_heads, self.n_kv_heads, self._group, self.head_dim
        d_out = self.out.input_grad(grad).view(t, s, hkv, g, dh)
        probs = state.probs.index_select(3, positions)[..., :length].permute(3, 0, 1, 2, 4)  # [T, S, Hkv, G, Lc]
        q = state.q.index_select(3, positions).permute(3, 0, 1, 2, 4)  # [T, S, Hkv, G, dh]
        k, v = state.k[:, :, 0, :length], state.v[:, :, 0, :length]  # [S, Hkv, Lc, dh]
        d_scores = softmax_backward(torch.einsum("tshgd,shkd->tshgk", d_out, v), probs).to(q.dtype)
        d_q = torch.einsum("tshgk,shkd->tshgd", d_scores, k).reshape(t, s, hq, dh)
        d_k = torch.einsum("tshgk,tshgd->tskhd", d_scores, q)  # [T, S, Lc, Hkv, dh]
        d_v = torch.einsum("tshgk,tshgd->tskhd", probs.to(d_out.dtype), d_out)
        d_q, d_k = self._unrotate(d_q, d_k, state, length, positions)
        d_x = self.qkv.input_grad(torch.cat([d_k.flatten(-2), d_v.flatten(-2).to(d_k.dtype)], dim=-1),
                                  slice(hq * dh, None), rows=rows)
        index = torch.arange(t, device=grad.device)
        d_x[index, :, positions] += self.qkv.input_grad(d_q.flatten(-2), slice(0, hq * dh)).to(d_x.dtype)
        return d_x

    def _unrotate(self, d_q, d_k, state: AttentionState, length: int, positions: torch.Tensor | None):
        """Query and key gradients back through the scaling, rotary embeddings and norms: ``d_q``
        ``[T, S, Lc, H, dh]`` (or ``[T, S, H, dh]`` at ``positions``), ``d_k`` ``[T, S, Lc, Hkv, dh]``."""
        dtype = state.cos.dtype if state.cos is not None else (
            state.q_norm.x.dtype if state.q_norm is not None else d_q.dtype)
        d_q, d_k = d_q.to(dtype) * self.scaling, d_k.to(dtype)
        if state.cos is not None:
            cos, sin = state.cos[:length], state.sin[:length]
            if positions is None:
                d_q = rotary_backward(d_q, cos, sin)
            else:
                d_q = rotary_backward(d_q, state.cos[positions].unsqueeze(1), state.sin[positions].unsqueeze(1))
            d_k = rotary_backward(d_k, cos, sin)
        if self.q_norm is not None:
            q_state = crop(state.q_norm, length) if positions is None else at_rows(state.q_norm, positions)
            d_q = self.q_norm.backward(d_q, q_state)
            d_k = self.k_norm.backward(d_k, crop(state.k_norm, length))
        return d_q, d_k


# ------------------------------------------------------------------------------------- MLP


@dataclasses.dataclass
class MLPState:
    """What the backward multiplies the down projection's input gradient by, ``[S, L, k, I]``:
    ``f'(pre)`` (plain, k = 1), or ``up * f'(gate)`` and ``f(gate)`` (gated, k = 2: the gradients of
    the gate's and the up projection's columns)."""

    factors: torch.Tensor


@dataclasses.dataclass
class MLP:
    """``down(f(up(x)))``, or with ``gated`` ``down(f(gate(x)) * up(x))`` where ``up`` holds the gate's
    columns first, then the up projection's (one matmul)."""

    up: Projection
    down: Projection
    activation: lean_backward._Fused
    gated: bool = False

    def cast(self, dtype):
        return dataclasses.replace(self, up=self.up.cast(dtype), down=self.down.cast(dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MLPState]:
        pre = self.up(x)
        if not self.gated:
            return self.down(self.activation.value(pre)).to(x.dtype), MLPState(self.activation.derivative(pre).unsqueeze(-2))
        gate, up = pre.chunk(2, dim=-1)
        f = self.activation.value(gate)
        return self.down(f * up).to(x.dtype), MLPState(torch.stack([up * self.activation.derivative(gate), f], dim=-2))

    def backward(self, grad: torch.Tensor, state: MLPState, rows: TargetRows | None = None) -> torch.Tensor:
        """Input gradient for gradients ``[T, S, Lc, D]`` at their valid ``rows`` (packed: the
        elementwise work skips the padding too), or for gradients of ``state``'s shape / ``[T, *that]``."""
        if rows is None:
            inner = self.down.input_grad(grad)
            return self.up.input_grad((inner.unsqueeze(-2) * state.factors).flatten(-2))
        inner = self.down.input_grad(rows.pack(grad))  # [N, I]
        factors = rows.pack_state(state.factors)  # [N, k, I]
        return rows.unpack(self.up.input_grad((inner.unsqueeze(-2) * factors).flatten(-2)))


# ----------------------------------------------------------------------------- description


@dataclasses.dataclass
class Block:
    """A pre-norm block: ``h + attention(norm1(h))``, then ``h + mlp(norm2(h))``."""

    norm1: Norm
    attention: Attention
    norm2: Norm
    mlp: MLP

    def cast(self, dtype: torch.dtype | None) -> Block:
        """The block with its matmuls in ``dtype`` (None: the model's weights, no copy)."""
        if dtype is None:
            return self
        return dataclasses.replace(self, attention=self.attention.cast(dtype), mlp=self.mlp.cast(dtype))


@dataclasses.dataclass
class Decoder:
    """A decoder-only body described with the blocks above: word embeddings plus learned
    ``positions`` (GPT-2), the ``blocks``, the final norm. ``rotary(x,
    position_ids)`` gives the model's rotary cos/sin ``[1, L, dh]`` (its own rotary module, scaling
    rules included) where the attention rotates queries and keys."""

    family: str
    blocks: list[Block]
    final_norm: Norm
    positions: torch.Tensor | None = None
    rotary: object = None
