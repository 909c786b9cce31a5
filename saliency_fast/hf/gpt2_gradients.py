"""Every generation target's gradient on GPT-2 models, from kept forwards and a hand-written backward.

The generic single pass (:mod:`saliency_fast.hf.causal_pass`) runs one forward per chunk of targets
(and batch of points) and batches the chunk's backward through autograd under vmap. On GPT-2 that
leaves work no score needs: every target of a chunk runs over the chunk's longest prefix, the
forward is recomputed per chunk, and vmap glues the shared forward to the batched gradients with
copies (attention operands expanded per target, LayerNorm and softmax backward run target by
target, then stacked). Here:

- one forward per batch of points (the input, path points, noisy copies) over the whole sequence
  keeps what the backward reads (LayerNorm inputs and statistics, attention probabilities, queries,
  keys and values, the activation's derivative). By causality every prefix's activations are the
  first rows of the sequence's, so it serves every target;
- the backward is written out for a batch of targets over those shared activations: each weight's
  input gradient is one matmul over every target's rows, the activation's derivative a broadcast
  multiply, the LayerNorm and softmax backward the native kernels, called once per target;
- targets go in small chunks of neighbouring positions, each on its own prefix, so padding to the
  chunk's longest prefix costs a few rows, not a large chunk's spread;
- the last block runs at each target's own row only (its query, attention output, MLP and the
  final norm are read there and nowhere else); its keys and values reach every earlier row.

It computes what autograd computes on the model (tested against autograd on each prefix in float64,
and against the generic pass); a probe on a tiny input checks, once per model, that the written-out
forward gives the model's hidden states and its backward autograd's gradients. With
``dtype=torch.bfloat16`` the matmuls run in bf16 and the norms, softmax and residual stream in
float32, as under autocast. Taken only in eval mode, in float32 or bf16 (not fp16: its range needs
autocast's care), and where the kept activations fit :data:`MAX_STATE_BYTES` (attention
probabilities grow with the square of the length; longer sequences take the generic pass, whose
memory stays bounded).
"""

from __future__ import annotations

import dataclasses
import weakref

import torch
from torch import nn

from saliency_fast.hf import lm_head
from saliency_fast.methods import lean_backward

# Saved activations of the shared forward: the hand-written pass is taken only below this
# (GPT-2-small: 12 x (L x 27.7 kB + 48 L^2 bytes): 96 tokens 37 MB, 1,024 tokens 0.94 GB).
MAX_STATE_BYTES = 1 << 30

# Targets per backward: small, so padding each to the chunk's longest prefix stays small (a chunk
# of k neighbouring targets pads (k - 1) / 2 rows per target on average), yet each matmul still
# has a few hundred rows (k x prefix length) to run at full speed.
TARGETS_PER_CHUNK = 8


@dataclasses.dataclass
class _Norm:
    """A LayerNorm's input ``[S, L, D]`` and its per-row mean and ``1 / std`` (``[S, L, 1]``)."""

    x: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor


@dataclasses.dataclass
class _BlockWeights:
    """A block's four projections ``(W [in, out], b)``, in the dtype its matmuls run in."""

    attn: tuple[torch.Tensor, torch.Tensor]
    attn_proj: tuple[torch.Tensor, torch.Tensor]
    fc: tuple[torch.Tensor, torch.Tensor]
    proj: tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class _BlockState:
    weights: _BlockWeights
    norm1: _Norm
    q: torch.Tensor  # [S, H, L, dh], times the attention's scaling (as are the keys)
    k: torch.Tensor
    v: torch.Tensor
    probs: torch.Tensor  # [S, H, L, L]
    norm2: _Norm
    act_grad: torch.Tensor  # f'(MLP pre-activation) [S, L, 4D]


@dataclasses.dataclass
class ForwardState:
    """The shared forward over ``S`` points of ``L`` tokens: final hidden states ``[S, L, D]`` and
    what the backward reads."""

    hidden: torch.Tensor
    blocks: list[_BlockState]
    final_norm: _Norm


class GPT2Gradients:
    """Forward and target-batched backward of a GPT-2 body (``model.transformer``)."""

    def __init__(self, model: nn.Module):
        body = model.transformer
        self.wpe = body.wpe.weight
        self.blocks = list(body.h)
        self.ln_f = body.ln_f
        self.n_heads = self.blocks[0].attn.num_heads

    def state_bytes(self, n_points: int, length: int) -> int:
        """Bytes :meth:`forward` keeps for ``n_points`` points of ``length`` tokens: per block and token
        the two LayerNorm inputs, queries, keys and values (5 D), the activation's derivative, the
        norms' statistics, and a row of attention probabilities per head."""
        d, inner = self.wpe.shape[1], self.blocks[0].mlp.c_fc.weight.shape[1]
        per_block = length * (5 * d + inner + 4 + self.n_heads * length)
        return n_points * len(self.blocks) * per_block * self.wpe.element_size()

    # ------------------------------------------------------------------------------- forward

    def weights(self, dtype: torch.dtype | None = None) -> list[_BlockWeights]:
        """Every block's projections for matmuls in ``dtype`` (None: the model's own weights, no
        copy; ``torch.bfloat16``: one cast per call, as autocast's)."""

        def cast(conv):
            return tuple(t.detach() if dtype is None else t.detach().to(dtype) for t in (conv.weight, conv.bias))

        return [_BlockWeights(cast(b.attn.c_attn), cast(b.attn.c_proj), cast(b.mlp.c_fc), cast(b.mlp.c_proj))
                for b in self.blocks]

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, weights: list[_BlockWeights] | None = None) -> ForwardState:
        """The body's forward on word embeddings ``[S, L, D]``, keeping what :meth:`backward` reads.
        ``weights`` (see :meth:`weights`) set the matmuls' dtype; the residual stream, the norms and
        the softmax stay in the embeddings' dtype, as under autocast."""
        weights = self.weights() if weights is None else weights
        length = embeds.shape[1]
        h = embeds + self.wpe[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
        states = []
        for block, w in zip(self.blocks, weights):
            attn, mlp = block.attn, block.mlp
            a, norm1 = _layer_norm(h, block.ln_1)
            q, k, v = (_heads(t, self.n_heads) for t in _conv1d(a, w.attn).chunk(3, dim=-1))
            scores = torch.matmul(q, k.transpose(-1, -2)).to(h.dtype) * attn.scaling
            probs = torch.softmax(scores.masked_fill(~causal, torch.finfo(scores.dtype).min), dim=-1).to(v.dtype)
            h = h + _conv1d(_merge_heads(torch.matmul(probs, v)), w.attn_proj).to(h.dtype)
            m, norm2 = _layer_norm(h, block.ln_2)
            pre = _conv1d(m, w.fc)
            fused = lean_backward.activation_pair(mlp.act)
            h = h + _conv1d(fused.value(pre), w.proj).to(h.dtype)
            states.append(_BlockState(w, norm1, q * attn.scaling, k * attn.scaling, v, probs, norm2,
                                      fused.derivative(pre)))
        hidden, final = _layer_norm(h, self.ln_f)
        return ForwardState(hidden, states, final)

    # ------------------------------------------------------------------------------ backward

    @torch.no_grad()
    def backward(self, state: ForwardState, positions: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """``d score_i / d embeds`` ``[T, S, Lc, D]`` for targets read at ``positions`` (``[T]``) whose
        gradients at the final hidden states (there only) are ``seeds`` (``[S, T, D]``); ``Lc`` is
        ``max(positions) + 1`` (every target's rows after its own position are zero)."""
        length = int(positions.max()) + 1
        at = _rows(positions)
        top = _layer_norm_backward(seeds.transpose(0, 1), at(state.final_norm), self.ln_f)  # [T, S, D]
        grad = self._last_block(state.blocks[-1], self.blocks[-1], positions, top, length)
        for block, saved in zip(self.blocks[-2::-1], state.blocks[-2::-1]):
            grad = self._block(saved, block, grad, length)
        return grad  # h = embeds + positions: the same gradient

    def _last_block(self, saved: _BlockState, block: nn.Module, positions: torch.Tensor, top: torch.Tensor,
                    length: int) -> torch.Tensor:
        """The last block's backward from its output gradient ``top`` at each target's row (``[T, S, D]``):
        MLP, attention output and query at that row only; keys and values at every row up to it."""
        w, at = saved.weights, _rows(positions)
        inner = _conv1d_grad(top, w.proj).mul_(at(saved.act_grad))
        top = top + _layer_norm_backward(_conv1d_grad(inner, w.fc), at(saved.norm2), block.ln_2)
        d_out = _heads(_conv1d_grad(top, w.attn_proj).unsqueeze(-2), self.n_heads).squeeze(-2)  # [T, S, H, dh]
        probs = at(saved.probs, dim=2)[..., :length]  # [T, S, H, Lc]: each target's query row
        k, v = saved.k[:, :, :length], saved.v[:, :, :length]
        d_scores = _softmax_backward(torch.einsum("tshd,shld->tshl", d_out, v), probs)
        d_q = torch.einsum("tshl,shld->tshd", d_scores, k)
        d_k = d_scores.unsqueeze(-1) * at(saved.q, dim=2).unsqueeze(-2)  # [T, S, H, Lc, dh]
        d_v = probs.unsqueeze(-1) * d_out.unsqueeze(-2)
        d_kv = torch.cat([_merge_heads(d_k), _merge_heads(d_v)], dim=-1)  # [T, S, Lc, 2D]
        d_a = torch.matmul(d_kv, w.attn[0][:, top.shape[-1]:].T)
        index = torch.arange(len(positions), device=top.device)
        d_a[index, :, positions] += torch.matmul(d_q.flatten(-2), w.attn[0][:, : top.shape[-1]].T)
        grad = _layer_norm_backward(d_a, _crop(saved.norm1, length), block.ln_1)
        grad[index, :, positions] += top
        return grad

    def _block(self, saved: _BlockState, block: nn.Module, grad: torch.Tensor, length: int) -> torch.Tensor:
        """One block's backward for gradients ``[T, S, Lc, D]`` of its output."""
        w = saved.weights
        inner = _conv1d_grad(grad, w.proj).mul_(saved.act_grad[:, :length])
        grad = grad + _layer_norm_backward(_conv1d_grad(inner, w.fc), _crop(saved.norm2, length), block.ln_2)
        d_out = _heads(_conv1d_grad(grad, w.attn_proj), self.n_heads)  # [T, S, H, Lc, dh]
        probs = saved.probs[:, :, :length, :length]
        q, k, v = (t[:, :, :length] for t in (saved.q, saved.k, saved.v))
        d_scores = _softmax_backward(torch.matmul(d_out, v.transpose(-1, -2)), probs)
        d_qkv = torch.stack(
            [torch.matmul(d_scores, k), torch.matmul(d_scores.transpose(-1, -2), q), torch.matmul(probs.transpose(-1, -2), d_out)],
            dim=-3,
        )  # [T, S, H, 3, Lc, dh] -> [T, S, Lc, 3 D] in c_attn's (q, k, v | head | dh) order
        d_qkv = d_qkv.permute(0, 1, 4, 3, 2, 5).flatten(-3)
        return grad + _layer_norm_backward(_conv1d_grad(d_qkv, w.attn), _crop(saved.norm1, length), block.ln_1)


def for_model(model: nn.Module, n_points: int, length: int, dtype: torch.dtype | None) -> GPT2Gradients | None:
    """The hand-written pass for ``n_points`` points of ``length`` tokens when it computes what the
    model computes: a GPT-2 body in eval mode (dropout off), a float32 or float64 model, ``dtype``
    None or ``torch.bfloat16`` (its matmuls then run in bf16, the rest as under autocast), and saved
    activations within :data:`MAX_STATE_BYTES`; else None. Checked by
    :func:`_probe` once per model and set of forward hooks: a hook that changes an output turns the
    pass off (transformers' own output-capturing hooks do not); hooks that only observe do not run
    in it."""
    if dtype not in (None, torch.bfloat16) or model.training:
        return None
    key = _hooks_key(getattr(model, "transformer", model))
    found = _probed.get(model)
    if found is None or found[0] != key:
        found = _probed[model] = (key, _probe(model))
    engine = found[1]
    if engine is None or engine.state_bytes(n_points, length) > MAX_STATE_BYTES:
        return None
    return engine


_probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hooks_key(body: nn.Module) -> tuple:
    """The forward (pre-)hooks that run in ``body``: global ones and each module's, by handle id."""
    from torch.nn.modules import module as torch_module

    return (
        tuple(torch_module._global_forward_hooks), tuple(torch_module._global_forward_pre_hooks),
        tuple((id(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
              for m in body.modules() if m._forward_hooks or m._forward_pre_hooks),
    )


def _is_gpt2_body(body: nn.Module | None) -> bool:
    """The module layout this file writes out (names, Conv1D weights ``[in, out]``, LayerNorms)."""
    if body is None or not all(hasattr(body, name) for name in ("wpe", "h", "ln_f")):
        return False
    for block in body.h:
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        if attn is None or mlp is None or getattr(attn, "is_cross_attention", True) or not hasattr(attn, "scaling"):
            return False
        if not all(isinstance(getattr(block, n, None), nn.LayerNorm) for n in ("ln_1", "ln_2")):
            return False
        convs = (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
        if not all(type(c).__name__ == "Conv1D" and c.bias is not None for c in convs):
            return False
        if lean_backward.activation_pair(mlp.act) is None or hasattr(block, "crossattention"):
            return False
    return isinstance(body.ln_f, nn.LayerNorm) and body.ln_f.weight.dtype in (torch.float32, torch.float64)


def _probe(model: nn.Module) -> GPT2Gradients | None:
    """A :class:`GPT2Gradients` of ``model`` when its forward gives the model's hidden states and
    its backward autograd's gradient, on a tiny input; else None."""
    if not _is_gpt2_body(getattr(model, "transformer", None)):
        return None
    engine = GPT2Gradients(model)
    embeds = lm_head.probe_embeds(model, 5).detach()
    positions = torch.tensor([1, embeds.shape[1] - 1], device=embeds.device)
    dtype = embeds.dtype
    try:
        state = engine.forward(embeds)
        seeds = torch.randn(state.hidden[:, positions].shape, generator=torch.Generator().manual_seed(0))
        seeds = seeds.to(embeds)
        grads = engine.backward(state, positions, seeds)
        with torch.enable_grad():
            x = embeds.clone().requires_grad_(True)
            hidden = lm_head.body_hidden(model, x)
            expected = torch.stack([
                torch.autograd.grad((hidden[:, p] * seeds[:, i]).sum(), x, retain_graph=True)[0]
                for i, p in enumerate(positions.tolist())
            ])
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError):
        return None
    same_forward = lm_head.agrees(state.hidden, hidden.detach(), dtype)
    return engine if same_forward and lm_head.agrees(grads, expected, dtype) else None


# ----------------------------------------------------------------------------------- pieces


def _conv1d(x: torch.Tensor, projection: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """transformers' ``Conv1D``: ``x @ W + b`` with ``W`` ``[in, out]``, in ``W``'s dtype."""
    weight, bias = projection
    return torch.addmm(bias, x.flatten(0, -2).to(weight.dtype), weight).view(*x.shape[:-1], -1)


def _conv1d_grad(grad: torch.Tensor, projection: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Input gradient of :func:`_conv1d`: ``grad @ W.T``, one matmul over every leading dim."""
    weight = projection[0]
    return torch.matmul(grad.to(weight.dtype), weight.T)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., L, D]`` -> ``[..., H, L, D / H]``."""
    return x.unflatten(-1, (n_heads, -1)).transpose(-2, -3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[..., H, L, dh]`` -> ``[..., L, H dh]``."""
    return x.transpose(-2, -3).flatten(-2)


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, _Norm]:
    y, mean, rstd = torch.native_layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return y, _Norm(x, mean, rstd)


def _layer_norm_backward(grad: torch.Tensor, saved: _Norm, norm: nn.LayerNorm) -> torch.Tensor:
    """Input gradient of a LayerNorm for a batch of gradients ``grad``: ``[T, *saved.x.shape]``
    (the rows every target shares), or ``saved``'s shape (one row per target)."""
    # the native kernel reads the mean and 1 / std as flat arrays: contiguous, or it misreads them
    x, mean, rstd = (t.contiguous() for t in (saved.x, saved.mean, saved.rstd))

    def one(g):
        return torch.ops.aten.native_layer_norm_backward(
            g.to(x.dtype).contiguous(), x, norm.normalized_shape, mean, rstd, norm.weight, None, [True, False, False])[0]

    return one(grad) if grad.shape == x.shape else _per_target(one, grad)


def _softmax_backward(grad: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Input gradient of a softmax over the last dim, for gradients as in :func:`_layer_norm_backward`."""
    probs = probs.contiguous()

    def one(g):
        return torch._softmax_backward_data(g.contiguous(), probs, -1, probs.dtype)

    return one(grad) if grad.shape == probs.shape else _per_target(one, grad)


def _per_target(backward, grad: torch.Tensor) -> torch.Tensor:
    """``backward(grad[t])`` for every target ``t``, stacked: the native backward kernels take one
    input shape, and one call per target beats the same arithmetic written as broadcast ops
    (LayerNorm, 8 x 96 x 768: 0.28 ms against 1.05 ms)."""
    first = backward(grad[0])
    out = first.new_empty((grad.shape[0], *first.shape))  # the kernel's dtype (a LayerNorm's: float32)
    out[0] = first
    for t in range(1, grad.shape[0]):
        out[t] = backward(grad[t])
    return out


def _crop(saved: _Norm, length: int) -> _Norm:
    return _Norm(saved.x[:, :length], saved.mean[:, :length], saved.rstd[:, :length])


def _rows(positions: torch.Tensor):
    """``at(x)``: each target's row of a saved ``[S, L, ...]`` tensor (or along ``dim``), target-major
    (``[T, S, ...]``); a :class:`_Norm` row by row."""

    def at(x, dim: int = 1):
        if isinstance(x, _Norm):
            return _Norm(at(x.x), at(x.mean), at(x.rstd))
        return x.index_select(dim, positions).movedim(dim, 0)

    return at
