"""The native DIG ops against their spec (the dig_* functions of saliency_fast/reference.py).

The per-dimension arithmetic is the same sequence of correctly rounded operations on every
device (no fused multiply-add), so monotonized values, counts and choices must be equal, not
close; correction norms are float64 sums whose order may differ, hence a 1e-12 relative slack.
Tests of the native ops skip only when the backend is forced to the reference.
"""

from __future__ import annotations

import os

import pytest
import torch

from saliency_fast import ops, reference
from tests.conftest import DEVICES

FORCED_REFERENCE = os.environ.get("SALIENCY_FAST_BACKEND", "").strip().lower() == "reference"
needs_native = pytest.mark.skipif(FORCED_REFERENCE, reason="SALIENCY_FAST_BACKEND=reference")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(7, 11, 33), (1, 1, 1), (5, 40, 8), (0, 3, 4), (3, 0, 5), (4, 6, 0)]


def native(name: str):
    return getattr(torch.ops.saliency_fast, name).default


def dig_case(n, k, d, dtype, device="cpu", contiguous=True):
    """Candidates of which about half the dims are monotonic: convex mixes of current and
    baseline, random values, exact copies of either end, and dims where current == baseline."""
    current, baseline = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    baseline[:, ::5] = current[:, ::5]
    mix = torch.rand(n, k, d, dtype=torch.float64)
    inside = baseline.unsqueeze(1) + mix * (current - baseline).unsqueeze(1)
    candidates = torch.where(torch.rand(n, k, d) < 0.5, inside, 2 * torch.randn(n, k, d, dtype=torch.float64))
    candidates[:, ::3, ::4] = current.unsqueeze(1)[:, :, ::4]
    candidates[:, 1::3, 1::4] = baseline.unsqueeze(1)[:, :, 1::4]
    anchor_word = torch.randn(n, d, dtype=torch.float64)
    valid = torch.rand(n, k) < 0.7
    if n:
        valid[0] = False  # one row with no valid candidate
    tensors = [t.to(dtype) for t in (candidates, current, baseline, anchor_word)]
    if not contiguous:
        tensors = [strided(t) for t in tensors]
    return [t.to(device) for t in tensors] + [valid.to(device)]


def strided(t):
    wide = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def test_native_dig_ops_registered():
    if FORCED_REFERENCE:
        pytest.skip("SALIENCY_FAST_BACKEND=reference")
    for name in ("dig_monotonize", "dig_monotonic_scores", "dig_select_anchor", "dig_exact_distances"):
        assert ops._native_gets((torch.zeros(1),), kernel=name), f"native {name} is not active"


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_scores_match_reference(device, dtype, shape, contiguous):
    candidates, current, baseline, _, _ = dig_case(*shape, dtype, device, contiguous)
    counts, norms = native("dig_monotonic_scores")(candidates, current, baseline, 7)
    ref_counts, ref_norms = reference.dig_monotonic_scores(candidates, current, baseline, 7)
    assert counts.dtype == torch.long and norms.dtype == torch.float64 and counts.shape == shape[:2]
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-12, atol=0)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("strategy", ["greedy", "maxcount"])
@pytest.mark.parametrize("scored_against", ["current", "anchor_word"])
def test_select_anchor_matches_reference(device, dtype, shape, strategy, scored_against):
    candidates, current, baseline, anchor_word, valid = dig_case(*shape, dtype, device)
    extra = (anchor_word,) if scored_against == "anchor_word" else ()
    choice, mono = native("dig_select_anchor")(candidates, valid, current, baseline, 9, strategy, *extra)
    ref_choice, ref_mono = reference.dig_select_anchor(candidates, valid, current, baseline, 9, strategy, *extra)
    assert torch.equal(choice, ref_choice)
    assert mono.dtype == dtype and torch.equal(mono, ref_mono)
    if shape[0]:
        assert choice[0] == -1 and torch.equal(mono[0], baseline[0])  # no valid candidate: the baseline


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_monotonize_matches_reference(device, dtype, contiguous):
    candidates, current, baseline, _, _ = dig_case(6, 4, 37, dtype, device, contiguous)
    anchor = candidates[:, 0]
    out = native("dig_monotonize")(anchor, current, baseline, 30)
    assert torch.equal(out, reference.dig_monotonize(anchor, current, baseline, 30))
    assert torch.equal(ops.dig_monotonize(anchor, current, baseline, 30), out)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, c, d", [(5, 9, 37), (1, 1, 1), (0, 4, 3), (3, 0, 3), (2, 3, 0)])
def test_exact_distances_match_reference(device, dtype, m, c, d):
    embedding = torch.randn(50, d).to(device, dtype)
    queries = torch.randn(m, d).to(device, dtype)
    candidates = torch.randint(0, 50, (m, c), device=device)
    if m and c > 1:
        embedding[candidates[0, 1]] = embedding[candidates[0, 0]]  # a tie must stay exact
    out = native("dig_exact_distances")(embedding, queries, candidates)
    assert out.dtype == torch.float64 and out.shape == (m, c)
    torch.testing.assert_close(out, reference.dig_exact_distances(embedding, queries, candidates), rtol=1e-13, atol=0)
    if m and c > 1:
        assert out[0, 0] == out[0, 1]


def test_reference_spec_by_hand():
    # dims: inside, outside above, outside below, current == baseline == candidate, current == baseline != candidate
    current = torch.tensor([[0.0, 0.0, 2.0, 1.0, 1.0]])
    baseline = torch.tensor([[2.0, 2.0, 0.0, 1.0, 1.0]])
    candidate = torch.tensor([[[1.0, 3.0, -1.0, 1.0, 5.0]]])
    counts, norms = reference.dig_monotonic_scores(candidate, current, baseline, 4)
    moved = current - (current - baseline) / 4  # a quarter of the way toward the baseline
    expected = torch.tensor([1.0, 3.0, -1.0, 1.0, 5.0])
    expected[[1, 2, 4]] = moved[0, [1, 2, 4]]
    assert counts.tolist() == [[2]]
    assert norms.item() == pytest.approx(torch.linalg.vector_norm(candidate[0, 0] - expected).item())
    assert torch.equal(reference.dig_monotonize(candidate[:, 0], current, baseline, 4)[0], expected)


def test_selection_rules_and_ties():
    current, baseline = torch.zeros(1, 2), torch.ones(1, 2)
    candidates = torch.tensor([[[5.0, 0.5], [0.5, 5.0], [0.5, 0.5], [0.2, 0.2], [6.0, 6.0]]])
    valid = torch.tensor([[True, True, False, True, True]])
    # greedy: smallest correction; the fully monotonic [0.5, 0.5] is not valid, [0.2, 0.2] is
    assert ops.dig_select_anchor(candidates, valid, current, baseline, 2, "greedy")[0].tolist() == [3]
    # max-count: candidates 0 and 1 tie with one monotonic dim behind candidate 3: then index 0 first
    valid[0, 3] = False
    assert ops.dig_select_anchor(candidates, valid, current, baseline, 2, "maxcount")[0].tolist() == [0]
    # greedy ties ([5, .5] and [.5, 5] need the same correction): the lower index
    assert ops.dig_select_anchor(candidates, valid, current, baseline, 2, "greedy")[0].tolist() == [0]


def test_nan_candidates_rank_last():
    current, baseline = torch.zeros(1, 2), torch.ones(1, 2)
    candidates = torch.tensor([[[float("nan"), 0.5], [9.0, 9.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    for fn in (ops.dig_select_anchor, reference.dig_select_anchor):
        assert fn(candidates, valid, current, baseline, 2, "greedy")[0].tolist() == [1]
    valid[0, 1] = False
    for fn in (ops.dig_select_anchor, reference.dig_select_anchor):
        assert fn(candidates, valid, current, baseline, 2, "greedy")[0].tolist() == [0]


@needs_native
def test_opcheck():
    candidates, current, baseline, anchor_word, valid = dig_case(3, 5, 6, torch.float32)
    torch.library.opcheck(native("dig_monotonic_scores"), (candidates, current, baseline, 3))
    torch.library.opcheck(native("dig_select_anchor"), (candidates, valid, current, baseline, 3, "greedy", anchor_word))
    torch.library.opcheck(native("dig_select_anchor"), (candidates, valid, current, baseline, 3, "maxcount", None))
    torch.library.opcheck(native("dig_exact_distances"), (current, baseline, torch.tensor([[0, 2], [1, 1], [2, 0]])))
    anchor = candidates[:, 0].clone().requires_grad_()
    torch.library.opcheck(native("dig_monotonize"), (anchor, current.requires_grad_(), baseline, 3))


@needs_native
def test_monotonize_gradients():
    # values kept off the interval ends, where the piecewise-linear map has kinks
    current = torch.tensor([[0.0, 0.0, 2.0, 1.0]], dtype=torch.float64)
    baseline = torch.tensor([[2.0, 2.0, 0.0, 3.0]], dtype=torch.float64)
    anchor = torch.tensor([[1.0, 3.0, -1.0, 2.5]], dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_() for t in (anchor, current, baseline))
    assert torch.autograd.gradcheck(lambda a, c, b: native("dig_monotonize")(a, c, b, 4), inputs)
    native_grads = torch.autograd.grad(native("dig_monotonize")(*inputs, 4).sum(), inputs)
    reference_grads = torch.autograd.grad(reference.dig_monotonize(*inputs, 4).sum(), inputs)
    for got, want in zip(native_grads, reference_grads):
        assert torch.equal(got, want)


def test_scores_and_selection_carry_no_gradient():
    candidates, current, baseline, _, valid = dig_case(2, 3, 4, torch.float64)
    candidates.requires_grad_()
    assert not ops.dig_monotonic_scores(candidates, current, baseline, 3)[1].requires_grad
    assert not ops.dig_select_anchor(candidates, valid, current, baseline, 3, "greedy")[1].requires_grad


def bad_calls():
    c, cur, b, aw, valid = dig_case(2, 3, 4, torch.float32)
    return [
        ("dig_monotonic_scores", (c.long(), cur, b, 3), TypeError, "candidates must have a floating dtype"),
        ("dig_monotonic_scores", (c[0], cur, b, 3), ValueError, r"candidates must have shape \(N, K, D\)"),
        ("dig_monotonic_scores", (c, cur[:, :3], b, 3), ValueError, "current must have shape"),
        ("dig_monotonic_scores", (c, cur, b.double(), 3), TypeError, "baseline has dtype"),
        ("dig_monotonic_scores", (c, cur, b[:1], 3), ValueError, "baseline has shape"),
        ("dig_monotonic_scores", (c, cur, b, 0), ValueError, "steps must be >= 1"),
        ("dig_select_anchor", (c, valid.int(), cur, b, 3, "greedy"), TypeError, "valid must be a bool tensor"),
        ("dig_select_anchor", (c, valid[:, :2], cur, b, 3, "greedy"), ValueError, "valid must have shape"),
        ("dig_select_anchor", (c, valid, cur, b, 3, "best"), ValueError, "strategy must be one of"),
        ("dig_select_anchor", (c, valid, cur, b, 3, "greedy", aw[:1]), ValueError, "anchor_word has shape"),
        ("dig_monotonize", (c[:, 0], cur, b[:, :2], 3), ValueError, "baseline has shape"),
        ("dig_monotonize", (c[:, 0], cur.half(), b, 3), TypeError, "current has dtype"),
        ("dig_monotonize", (c[:, 0].int(), cur, b, 3), TypeError, "anchor must have a floating dtype"),
        ("dig_exact_distances", (c[0], cur.half(), torch.zeros(2, 2, dtype=torch.long)), TypeError,
         "queries has dtype"),
        ("dig_exact_distances", (c[0], cur, torch.zeros(3, 2, dtype=torch.long)), ValueError,
         r"candidates must have shape \(M, C\) with M = 2"),
        ("dig_exact_distances", (c[0], cur, torch.zeros(2, 2, dtype=torch.int32)), TypeError,
         "candidates must be an int64 tensor"),
        ("dig_exact_distances", (c[0], cur, torch.full((2, 2), 3)), ValueError,
         r"candidates must hold row indices of embedding, in \[0, 3\)"),
        ("dig_exact_distances", (c[0], cur[:, :2], torch.zeros(2, 2, dtype=torch.long)), ValueError,
         r"queries must have shape \(M, D\)"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input(case):
    name, args, error, match = bad_calls()[case]
    with pytest.raises(error, match=match):
        getattr(ops, name)(*args)
    with pytest.raises(error, match=match):
        getattr(reference, name)(*args)
    if not FORCED_REFERENCE:
        with pytest.raises(error, match=match):
            native(name)(*args)


def test_steps_must_be_an_int():
    c, cur, b, _, _ = dig_case(2, 3, 4, torch.float32)
    with pytest.raises(TypeError, match="steps must be an int"):
        ops.dig_monotonize(c[:, 0], cur, b, 2.5)
