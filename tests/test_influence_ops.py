"""per_example_linear_grad (native) against its spec in saliency_fast/reference.py, and the spec
against autograd: the exact mode is the per-example gradient of a Linear layer's weight.

The native op contracts over positions in the same order as the reference's einsum only up to
summation order, hence dtype-dependent tolerances on the accumulation dtype's results.
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
# (n, t, d_in, d_out, k_in, k_out); k None = exact
SHAPES = [(5, 7, 12, 9, None, None), (3, 4, 33, 20, 8, 6), (1, 1, 1, 1, None, None), (4, 3, 16, 5, 16, None),
          (2, 6, 7, 11, None, 3), (0, 3, 4, 5, 2, 2), (3, 0, 4, 5, None, None), (2, 130, 140, 3, 130, None)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


def native(*args):
    return torch.ops.saliency_fast.per_example_linear_grad.default(*args)


def case(n, t, d_in, d_out, k_in, k_out, dtype, device="cpu"):
    gen = torch.Generator().manual_seed(n * 1000 + t * 10 + d_in)
    a = torch.randn(n, t, d_in, generator=gen)
    g = torch.randn(n, t, d_out, generator=gen)
    p_in = None if k_in is None else torch.randn(d_in, k_in, generator=gen) / k_in**0.5
    p_out = None if k_out is None else torch.randn(d_out, k_out, generator=gen) / k_out**0.5
    return [None if x is None else x.to(dtype=dtype, device=device) for x in (a, g, p_in, p_out)]


def test_native_op_registered():
    if FORCED_REFERENCE:
        pytest.skip("SALIENCY_FAST_BACKEND=reference")
    assert ops._native_gets((torch.zeros(1),), kernel="per_example_linear_grad")


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_native_matches_reference(device, dtype, shape):
    args = case(*shape, dtype, device)
    out, expected = native(*args), reference.per_example_linear_grad(*args)
    n, _, d_in, d_out, k_in, k_out = shape
    assert out.shape == (n, k_out or d_out, k_in or d_in)
    assert out.dtype == reference.opmath_dtype(dtype) and out.device.type == device
    tol = TOLERANCE[dtype] * max(1, shape[1])
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


@needs_native
def test_non_contiguous_inputs():
    a, g, p_in, p_out = case(3, 5, 8, 6, 4, 3, torch.float64)
    a_wide = torch.stack([a, torch.zeros_like(a)], -1).flatten(-2)[..., ::2]
    g_t = g.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(native(a_wide, g_t, p_in.t().contiguous().t(), p_out),
                               reference.per_example_linear_grad(a, g, p_in, p_out), rtol=1e-12, atol=1e-12)


def test_exact_mode_is_the_per_example_weight_gradient():
    # the autograd gradient of each example's loss through nn.Linear, one example at a time
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4, dtype=torch.float64)
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.__setitem__("a", i[0].detach()))
    out = layer(x)
    out.retain_grad()
    (out.sin().sum()).backward()
    per_example = ops.per_example_linear_grad(seen["a"], out.grad)
    for n in range(3):
        layer.zero_grad()
        layer(x[n]).sin().sum().backward()
        torch.testing.assert_close(per_example[n], layer.weight.grad, rtol=1e-12, atol=1e-12)


def test_projection_is_the_projected_gradient():
    a, g, p_in, p_out = case(2, 4, 6, 5, 3, 2, torch.float64)
    full = reference.per_example_linear_grad(a, g)
    torch.testing.assert_close(reference.per_example_linear_grad(a, g, p_in, p_out), p_out.T @ full @ p_in)


@needs_native
def test_opcheck():
    # no requires_grad samples: the op is autograd-free by design
    for shape in SHAPES[:3]:
        torch.library.opcheck(torch.ops.saliency_fast.per_example_linear_grad.default, tuple(case(*shape, torch.float32)))


def test_wrapper_is_not_differentiable():
    a, g, _, _ = case(2, 3, 4, 5, None, None, torch.float32)
    assert not ops.per_example_linear_grad(a.requires_grad_(), g).requires_grad


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.ones(2, 3), torch.ones(2, 3, 4)), ValueError, "activations must have shape"),
        ((torch.ones(2, 3, 4), torch.ones(2, 2, 4)), ValueError, "output_grads must have shape"),
        ((torch.ones(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.float64)), TypeError, "output_grads has dtype"),
        ((torch.ones(2, 3, 4, dtype=torch.long), torch.ones(2, 3, 4)), TypeError, "activations must have a floating"),
        ((torch.ones(2, 3, 4), torch.ones(2, 3, 5), torch.ones(5, 2)), ValueError, "in_projection must have shape"),
        ((torch.ones(2, 3, 4), torch.ones(2, 3, 5), None, torch.ones(4, 2)), ValueError, "out_projection must have"),
    ],
)
@pytest.mark.parametrize("entry", ["public", "reference", "native"])
def test_bad_input(args, error, match, entry):
    if entry == "native" and FORCED_REFERENCE:
        pytest.skip("SALIENCY_FAST_BACKEND=reference")
    fn = {"public": ops.per_example_linear_grad, "reference": reference.per_example_linear_grad, "native": native}
    args = args + (None,) * (4 - len(args))
    with pytest.raises(error, match=match):
        fn[entry](*args)
