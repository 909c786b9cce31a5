"""The native IG ops against their spec (saliency_fast/reference.py).

Accuracy rule (flash-attention's): against a float64 reference on the same inputs, the native
op's max error may be at most twice that of the eager PyTorch composition at the same precision
(the reference run in the inputs' dtype), plus the rounding a different summation order may
cost (a standard bound: terms x machine epsilon x magnitude of the summands).

Tests of the native ops themselves skip only when the backend is forced to the reference
(SALIENCY_FAST_BACKEND=reference); otherwise a missing build fails test_native_backend_active.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saliency_fast
from saliency_fast import ops, reference
from tests.conftest import DEVICES

FORCED_REFERENCE = os.environ.get("SALIENCY_FAST_BACKEND", "").strip().lower() == "reference"
needs_native = pytest.mark.skipif(FORCED_REFERENCE, reason="SALIENCY_FAST_BACKEND=reference")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCES = ["none", "sum", "l2", "abs_sum"]
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def native(name: str):
    return getattr(torch.ops.saliency_fast, name).default


def op_of(entry: str, name: str):
    """The op ``name`` as the native kernel called directly, the reference, or the public op."""
    if entry == "native":
        return native(name)
    return getattr(reference if entry == "reference" else ops, name)


NATIVE = pytest.param("native", marks=needs_native)


# ---------------------------------------------------------------------------------------------
# helpers


def random_tensor(shape, dtype, device="cpu", contiguous=True, positive=False):
    """Random values (never all zeros); non-contiguous ones are every other element of a wider
    buffer, so strides differ but values are as random."""
    values = torch.rand(shape, dtype=torch.float64) + 0.25 if positive else torch.randn(shape, dtype=torch.float64)
    values = values.to(dtype)
    if contiguous:
        return values.to(device)
    wide = torch.empty((*shape[:-1], 2 * shape[-1]), dtype=dtype, device=device)
    strided = wide[..., ::2]
    strided.copy_(values)
    return strided


def opmath_eps(dtype: torch.dtype) -> float:
    return torch.finfo(reference.opmath_dtype(dtype)).eps


def max_abs(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def assert_accurate(result, eager, exact, slack):
    """result (native) and eager (the composition at the same precision) against exact (float64)."""
    assert result.dtype == eager.dtype and result.shape == eager.shape and result.device == eager.device
    err_result = max_abs(result.double().cpu() - exact)
    err_eager = max_abs(eager.double().cpu() - exact)
    assert err_result <= 2 * err_eager + slack, (err_result, err_eager, slack)


def accumulate_magnitude(grads, weights, x, baseline, reduce, partial):
    """Elementwise bound of the summands' magnitude, reduced like the result."""
    g = grads.double().cpu().abs()
    w = weights.double().cpu().abs().reshape((-1,) + (1,) * x.dim())
    mag = (g * w).sum(0) * (x.double().cpu() - baseline.double().cpu()).abs()
    if partial is not None:
        mag = mag + partial.double().cpu().abs()
    return mag if reduce == "none" else reference.reduce_last_dim(mag, "l2" if reduce == "l2" else "sum")


def check_accumulate(grads, weights, x, baseline, reduce, partial, op):
    """op(...) against the eager composition and a float64 reference on the same (CPU) inputs."""
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    args = [cpu(t) for t in (grads, weights, x, baseline)]
    result = op(grads, weights, x, baseline, reduce, partial)
    eager = reference.ig_accumulate(*args, reduce, cpu(partial)).to(x.device)
    exact = reference.ig_accumulate(*(t.double() for t in args), reduce, None if partial is None else cpu(partial).double())
    terms = grads.shape[0] + x.shape[-1] + 4
    slack = terms * opmath_eps(x.dtype) * max_abs(accumulate_magnitude(*args, reduce, cpu(partial)))
    assert_accurate(result, eager, exact, slack)


def check_interpolate(x, baseline, alphas, op):
    cpu = [t.cpu() for t in (x, baseline, alphas)]
    result = op(x, baseline, alphas)
    eager = reference.ig_interpolate(*cpu).to(x.device)
    exact = reference.ig_interpolate(*(t.double() for t in cpu))
    mag = max_abs(cpu[1].double()) + max_abs(cpu[2].double()) * (max_abs(cpu[0].double()) + max_abs(cpu[1].double()))
    assert_accurate(result, eager, exact, 4 * opmath_eps(x.dtype) * mag)


# ---------------------------------------------------------------------------------------------
# backend


def test_native_backend_active():
    """CI must not go green on the fallback: without SALIENCY_FAST_BACKEND=reference the
    compiled extension has to be loaded."""
    report = saliency_fast.info()
    if FORCED_REFERENCE:
        assert report["backend"] == "reference"
    else:
        assert report["backend"] == "native", report["reason"]
        assert report["native_cpu"]
        if torch.cuda.is_available():
            assert report["native_cuda"], "a GPU is present but the extension has no CUDA kernels"


# ---------------------------------------------------------------------------------------------
# native == reference on random shapes and dtypes (hypothesis)

leading_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=2)
dims = st.integers(0, 9)
float_dtypes = st.sampled_from(DTYPES)


@needs_native
@HYPOTHESIS
@given(lead=leading_shapes, dim=dims, steps=st.integers(0, 5), dtype=float_dtypes, alpha_dtype=float_dtypes,
       contiguous=st.booleans())
def test_interpolate_matches_reference(lead, dim, steps, dtype, alpha_dtype, contiguous):
    shape = (*lead, dim)
    x = random_tensor(shape, dtype, contiguous=contiguous)
    baseline = random_tensor(shape, dtype, contiguous=contiguous)
    alphas = random_tensor((steps,), alpha_dtype, positive=True)
    check_interpolate(x, baseline, alphas, native("ig_interpolate"))


@needs_native
@HYPOTHESIS
@given(lead=leading_shapes, dim=dims, steps=st.integers(0, 5), dtype=float_dtypes, weight_dtype=float_dtypes,
       reduce=st.sampled_from(REDUCES), partial=st.sampled_from(["none", "same", "opmath"]),
       contiguous=st.booleans())
def test_accumulate_matches_reference(lead, dim, steps, dtype, weight_dtype, reduce, partial, contiguous):
    shape = (*lead, dim)
    grads = random_tensor((steps, *shape), dtype, contiguous=contiguous)
    weights = random_tensor((steps,), weight_dtype)
    x = random_tensor(shape, dtype, contiguous=contiguous)
    baseline = random_tensor(shape, dtype)
    part = None if partial == "none" else random_tensor(
        shape, dtype if partial == "same" else reference.opmath_dtype(dtype), contiguous=contiguous)
    check_accumulate(grads, weights, x, baseline, reduce, part, native("ig_accumulate"))


@needs_native
@HYPOTHESIS
@given(lead=leading_shapes, dim=dims, steps=st.integers(0, 5), dtype=float_dtypes,
       acc_opmath=st.booleans(), contiguous=st.booleans())
def test_accumulate_inplace_matches_reference(lead, dim, steps, dtype, acc_opmath, contiguous):
    shape = (*lead, dim)
    grads = random_tensor((steps, *shape), dtype)
    weights = random_tensor((steps,), torch.float32)
    x = random_tensor(shape, dtype)
    baseline = random_tensor(shape, dtype)
    acc = random_tensor(shape, reference.opmath_dtype(dtype) if acc_opmath else dtype, contiguous=contiguous)
    before = acc.clone()
    storage = acc.data_ptr()

    def inplace(grads, weights, x, baseline, reduce, partial):  # partial is acc's value before the call
        native("ig_accumulate_")(acc, grads, weights, x, baseline)
        return acc

    check_accumulate(grads, weights, x, baseline, "none", before, inplace)
    assert acc.data_ptr() == storage


# ---------------------------------------------------------------------------------------------
# edges the random shapes rarely reach: thread and tile boundaries, long rows, m = 0


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("shape", [(64, 300), (3, 5000), (7, 1), (2, 3, 0), (0, 8)])
def test_accumulate_edge_shapes(device, dtype, reduce, shape):
    grads = random_tensor((3, *shape), dtype, device)
    weights = random_tensor((3,), torch.float64, device)
    x, baseline = random_tensor(shape, dtype, device), random_tensor(shape, dtype, device)
    partial = random_tensor(shape, reference.opmath_dtype(dtype), device)
    check_accumulate(grads, weights, x, baseline, reduce, None, native("ig_accumulate"))
    check_accumulate(grads, weights, x, baseline, reduce, partial, native("ig_accumulate"))


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduce", REDUCES)
def test_accumulate_without_steps_is_partial_or_zero(device, reduce):
    x, baseline = random_tensor((4, 6), torch.float32, device), random_tensor((4, 6), torch.float32, device)
    grads = torch.empty((0, 4, 6), device=device)
    weights = torch.empty((0,), device=device)
    partial = random_tensor((4, 6), torch.float32, device)
    expected = reference.reduce_last_dim(partial, reduce)
    torch.testing.assert_close(native("ig_accumulate")(grads, weights, x, baseline, reduce, partial), expected)
    zeros = native("ig_accumulate")(grads, weights, x, baseline, reduce, None)
    assert zeros.shape == expected.shape and not zeros.any()


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_interpolate_edge_shapes(device, dtype):
    for shape, steps in [((64, 300), 7), ((3, 5000), 2), ((1,), 1), ((2, 0), 3), ((4, 4), 0)]:
        x, baseline = random_tensor(shape, dtype, device), random_tensor(shape, dtype, device)
        check_interpolate(x, baseline, random_tensor((steps,), torch.float64, device, positive=True),
                          native("ig_interpolate"))


@needs_native
@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("shape", [(2, 17, 768), (5, 33), (4, 1)])
def test_cuda_matches_reference(dtype, reduce, shape):
    grads = random_tensor((6, *shape), dtype, "cuda", contiguous=False)
    weights = random_tensor((6,), torch.float32, "cuda")
    x, baseline = random_tensor(shape, dtype, "cuda"), random_tensor(shape, dtype, "cuda")
    partial = random_tensor(shape, reference.opmath_dtype(dtype), "cuda")
    check_accumulate(grads, weights, x, baseline, reduce, partial, native("ig_accumulate"))
    check_interpolate(x, baseline, random_tensor((6,), torch.float32, "cuda", positive=True), native("ig_interpolate"))
    acc = partial.clone()
    native("ig_accumulate_")(acc, grads, weights, x, baseline)
    torch.testing.assert_close(acc, native("ig_accumulate")(grads, weights, x, baseline, "none", partial))


# ---------------------------------------------------------------------------------------------
# the public ops dispatch to whichever backend is active and agree with the spec


@pytest.mark.parametrize("reduce", REDUCES)
def test_public_ops_match_reference(reduce):
    grads, weights = random_tensor((4, 3, 5), torch.float32), random_tensor((4,), torch.float32)
    x, baseline = random_tensor((3, 5), torch.float32), random_tensor((3, 5), torch.float32)
    check_accumulate(grads, weights, x, baseline, reduce, None, ops.ig_accumulate)
    check_interpolate(x, baseline, weights.abs(), ops.ig_interpolate)
    acc = torch.zeros(3, 5)
    torch.testing.assert_close(ops.ig_accumulate_(acc, grads, weights, x, baseline),
                               reference.ig_accumulate(grads, weights, x, baseline))


def test_inplace_public_op_refuses_autograd():
    grads = random_tensor((2, 3, 4), torch.float32).requires_grad_()
    x, baseline = random_tensor((3, 4), torch.float32), random_tensor((3, 4), torch.float32)
    with pytest.raises(RuntimeError, match="not differentiable"):
        ops.ig_accumulate_(torch.zeros(3, 4), grads, torch.ones(2), x, baseline)


# ---------------------------------------------------------------------------------------------
# registration: opcheck, autograd, torch.compile


def accumulate_samples(requires_grad: bool):
    for reduce in REDUCES:
        for with_partial in (False, True):
            grads = random_tensor((3, 2, 5), torch.float64)
            tensors = [grads, random_tensor((3,), torch.float64), random_tensor((2, 5), torch.float64),
                       random_tensor((2, 5), torch.float64)]
            partial = random_tensor((2, 5), torch.float64) if with_partial else None
            for t in tensors + ([partial] if with_partial else []):
                t.requires_grad_(requires_grad)
            yield (*tensors, reduce, partial)


@needs_native
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    for args in accumulate_samples(requires_grad):
        torch.library.opcheck(native("ig_accumulate"), args)
    for dtype in (torch.float32, torch.bfloat16):
        x, baseline = random_tensor((2, 5), dtype), random_tensor((2, 5), dtype)
        alphas = random_tensor((4,), torch.float32, positive=True)
        for t in (x, baseline, alphas):
            t.requires_grad_(requires_grad)
        torch.library.opcheck(native("ig_interpolate"), (x, baseline, alphas))
    if not requires_grad:
        grads, weights = random_tensor((3, 2, 5), torch.bfloat16), random_tensor((3,), torch.float32)
        x, baseline = random_tensor((2, 5), torch.bfloat16), random_tensor((2, 5), torch.bfloat16)
        torch.library.opcheck(native("ig_accumulate_"), (torch.zeros(2, 5), grads, weights, x, baseline))


@pytest.mark.parametrize("entry", [NATIVE, "reference"])
def test_gradcheck_accumulate(entry):
    op = op_of(entry, "ig_accumulate")
    for args in accumulate_samples(requires_grad=True):
        tensors, reduce, partial = args[:4], args[4], args[5]
        fn = lambda *t: op(*t[:4], reduce, t[4] if len(t) > 4 else None)  # noqa: E731
        inputs = (*tensors, partial) if partial is not None else tensors
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("entry", [NATIVE, "reference"])
def test_gradcheck_interpolate(entry):
    inputs = [random_tensor((2, 3), torch.float64), random_tensor((2, 3), torch.float64),
              random_tensor((4,), torch.float64, positive=True)]
    for t in inputs:
        t.requires_grad_()
    assert torch.autograd.gradcheck(op_of(entry, "ig_interpolate"), inputs)
    assert torch.autograd.gradgradcheck(op_of(entry, "ig_interpolate"), inputs)


def test_torch_compile_fullgraph():
    def attribute(x, baseline, alphas, weights):
        path = ops.ig_interpolate(x, baseline, alphas)
        grads = torch.cos(path)  # stands in for the model's gradients at each path point
        return ops.ig_accumulate(grads, weights, x, baseline, "l2")

    x, baseline = random_tensor((3, 8), torch.float32), random_tensor((3, 8), torch.float32)
    alphas, weights = random_tensor((5,), torch.float32, positive=True), random_tensor((5,), torch.float32)
    compiled = torch.compile(attribute, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x, baseline, alphas, weights), attribute(x, baseline, alphas, weights))


# ---------------------------------------------------------------------------------------------
# bad input: ValueError / TypeError naming the argument, from the native op called directly,
# the reference, and the public op

def _good():
    return {
        "grads": random_tensor((3, 2, 4), torch.float32),
        "weights": random_tensor((3,), torch.float32),
        "x": random_tensor((2, 4), torch.float32),
        "baseline": random_tensor((2, 4), torch.float32),
        "alphas": random_tensor((3,), torch.float32),
    }


ACCUMULATE_ERRORS = [
    # (what to change, exception, argument named in the message)
    ({"weights": torch.ones(2)}, ValueError, "weights"),
    ({"weights": torch.ones(3, 1)}, ValueError, "weights"),
    ({"weights": torch.ones(3, dtype=torch.int64)}, TypeError, "weights"),
    ({"grads": torch.ones(3, 2, 5)}, ValueError, "grads"),
    ({"grads": torch.ones(2, 4)}, ValueError, "grads"),
    ({"grads": torch.ones(3, 2, 4, dtype=torch.float64)}, TypeError, "grads"),
    ({"baseline": torch.ones(2, 5)}, ValueError, "baseline"),
    ({"baseline": torch.ones(2, 4, dtype=torch.float64)}, TypeError, "baseline"),
    ({"x": torch.ones(2, 4, dtype=torch.int32), "baseline": torch.ones(2, 4, dtype=torch.int32),
      "grads": torch.ones(3, 2, 4, dtype=torch.int32)}, TypeError, "x"),
    ({"x": torch.tensor(1.0), "baseline": torch.tensor(1.0), "grads": torch.ones(3)}, ValueError, "x"),
    ({"reduce": "mean"}, ValueError, "reduce"),
    ({"partial": torch.ones(2, 5)}, ValueError, "partial"),
    ({"partial": torch.ones(2, 4, dtype=torch.float64)}, TypeError, "partial"),
    ({"partial": torch.ones(2, 4, dtype=torch.float16)}, TypeError, "partial"),
]

INTERPOLATE_ERRORS = [
    ({"alphas": torch.ones(3, 1)}, ValueError, "alphas"),
    ({"alphas": torch.ones((), dtype=torch.float32)}, ValueError, "alphas"),
    ({"alphas": torch.ones(3, dtype=torch.int64)}, TypeError, "alphas"),
    ({"baseline": torch.ones(2, 5)}, ValueError, "baseline"),
    ({"baseline": torch.ones(2, 4, dtype=torch.float16)}, TypeError, "baseline"),
    ({"x": torch.ones(2, 4, dtype=torch.int64), "baseline": torch.ones(2, 4, dtype=torch.int64)}, TypeError, "x"),
    ({"x": torch.tensor(2.0), "baseline": torch.tensor(1.0)}, ValueError, "x"),
]

ENTRY_POINTS = [NATIVE, "reference", "public"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("change", "error", "name"), ACCUMULATE_ERRORS)
def test_accumulate_bad_input(entry, change, error, name):
    a = {**_good(), "reduce": "sum", "partial": None, **change}
    with pytest.raises(error, match=name):
        op_of(entry, "ig_accumulate")(a["grads"], a["weights"], a["x"], a["baseline"], a["reduce"], a["partial"])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("change", "error", "name"), INTERPOLATE_ERRORS)
def test_interpolate_bad_input(entry, change, error, name):
    a = {**_good(), **change}
    with pytest.raises(error, match=name):
        op_of(entry, "ig_interpolate")(a["x"], a["baseline"], a["alphas"])


@pytest.mark.parametrize("entry", [NATIVE, "public"])
@pytest.mark.parametrize(("acc", "error"), [
    (torch.zeros(2, 5), ValueError),
    (torch.zeros(2, 4, dtype=torch.float64), TypeError),
    (torch.zeros(2, 4, dtype=torch.float16), TypeError),
])
def test_accumulate_inplace_bad_acc(entry, acc, error):
    a = _good()
    fn = op_of(entry, "ig_accumulate_")
    with pytest.raises(error, match="acc"):
        fn(acc, a["grads"], a["weights"], a["x"], a["baseline"])


@needs_native
def test_accumulate_inplace_refuses_overlapping_acc():
    a = _good()
    with pytest.raises(ValueError, match="acc"):
        native("ig_accumulate_")(torch.zeros(1, 4).expand(2, 4), a["grads"], a["weights"], a["x"], a["baseline"])


@pytest.mark.parametrize("entry", ["reference", "public"])
def test_device_mismatch_names_argument(entry):
    a = _good()
    with pytest.raises(ValueError, match="baseline"):
        op_of(entry, "ig_interpolate")(a["x"], a["baseline"].to("meta"), a["alphas"])
    with pytest.raises(ValueError, match="weights"):
        op_of(entry, "ig_accumulate")(a["grads"], a["weights"].to("meta"), a["x"], a["baseline"], "sum", None)


@needs_native
@pytest.mark.needs_cuda
def test_cuda_device_mismatch():
    a = _good()
    with pytest.raises(ValueError, match="baseline"):
        native("ig_interpolate")(a["x"].cuda(), a["baseline"], a["alphas"].cuda())
    for arg in ("grads", "weights", "baseline"):
        moved = {k: v.cuda() if k != arg else v for k, v in a.items()}
        with pytest.raises(ValueError, match=arg):
            native("ig_accumulate")(moved["grads"], moved["weights"], moved["x"], moved["baseline"], "sum", None)


# ---------------------------------------------------------------------------------------------
# the CPU kernels' vector paths (AVX2 where the CPU has it): several tiles, step groups with a
# tail, dims that are no multiple of the vector width, two threads; the streaming (non-temporal)
# stores of outputs past the caches; the out= form of ig_interpolate


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_vector_paths_match_reference_over_many_tiles(dtype, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shape = (3, 40, 771)
        grads, weights = random_tensor((13, *shape), dtype), random_tensor((13,), torch.float32)
        x, baseline = random_tensor(shape, dtype), random_tensor(shape, dtype)
        for reduce in REDUCES:
            check_accumulate(grads, weights, x, baseline, reduce, None, native("ig_accumulate"))
        partial = random_tensor(shape, reference.opmath_dtype(dtype))
        check_accumulate(grads, weights, x, baseline, "l2", partial, native("ig_accumulate"))
        check_interpolate(x, baseline, random_tensor((13,), torch.float32, positive=True), native("ig_interpolate"))
    finally:
        torch.set_num_threads(before)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_interpolate_past_the_caches_matches_reference(dtype):
    # >= 32 MiB of output: the kernel writes it with non-temporal stores, into a fresh output and
    # into a buffer whose start is not aligned to a vector
    x, baseline = random_tensor((2, 2**19 + 3), dtype), random_tensor((2, 2**19 + 3), dtype)
    alphas = random_tensor((18,), torch.float32, positive=True)
    expected = reference.ig_interpolate(x, baseline, alphas)
    assert expected.numel() * expected.element_size() >= 32 * 2**20
    assert torch.equal(native("ig_interpolate")(x, baseline, alphas), expected)
    buffer = torch.empty(expected.numel() + 1, dtype=dtype)[1:].view(expected.shape)
    assert torch.equal(ops.ig_interpolate(x, baseline, alphas, out=buffer), expected)


@pytest.mark.parametrize("entry", [NATIVE, "public"])
def test_interpolate_out_writes_and_returns_the_buffer(entry):
    x, baseline = random_tensor((3, 5), torch.bfloat16), random_tensor((3, 5), torch.bfloat16)
    alphas = random_tensor((4,), torch.float32, positive=True)
    out = torch.full((4, 3, 5), float("nan"), dtype=torch.bfloat16)
    if entry == "native":
        result = out
        native("ig_interpolate_out")(x, baseline, alphas, out)
    else:
        result = ops.ig_interpolate(x, baseline, alphas, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.equal(out, reference.ig_interpolate(x, baseline, alphas))


@pytest.mark.parametrize("entry", [NATIVE, "public"])
@pytest.mark.parametrize(("out", "error", "match"), [
    (torch.empty(4, 3, 6), ValueError, "out must have shape"),
    (torch.empty(4, 3, 5, dtype=torch.float64), TypeError, "out"),
    (torch.empty(4, 5, 3).transpose(1, 2), ValueError, "contiguous"),
])
def test_interpolate_out_bad_buffer(entry, out, error, match):
    x, baseline, alphas = torch.randn(3, 5), torch.randn(3, 5), torch.rand(4)
    with pytest.raises(error, match=match):
        if entry == "native":
            native("ig_interpolate_out")(x, baseline, alphas, out)
        else:
            ops.ig_interpolate(x, baseline, alphas, out=out)


@needs_native
def test_interpolate_out_refuses_a_buffer_overlapping_its_inputs():
    buffer = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="out shares memory with x"):
        native("ig_interpolate_out")(buffer[0], torch.randn(3, 5), torch.rand(2), buffer)


def test_interpolate_out_refuses_autograd():
    x = torch.randn(3, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        ops.ig_interpolate(x, torch.randn(3, 5), torch.rand(4), out=torch.empty(4, 3, 5))


@needs_native
def test_opcheck_interpolate_out():
    x, baseline = random_tensor((2, 5), torch.float32), random_tensor((2, 5), torch.float32)
    alphas = random_tensor((4,), torch.float32, positive=True)
    torch.library.opcheck(native("ig_interpolate_out"), (x, baseline, alphas, torch.empty(4, 2, 5)))


@needs_native
def test_interpolate_bfloat16_rounds_denormals_and_nan_as_the_reference():
    # the AVX-512 BF16 narrowing flushes denormals and keeps NaN payloads: such groups take the
    # element-by-element path
    x, baseline = random_tensor((3, 100), torch.bfloat16), random_tensor((3, 100), torch.bfloat16)
    x[0, 3], baseline[0, 3] = 1e-39, 2e-39
    x[1, 40], baseline[2, 70] = float("nan"), -1e-39
    alphas = random_tensor((5,), torch.float32, positive=True)
    expected, found = reference.ig_interpolate(x, baseline, alphas), native("ig_interpolate")(x, baseline, alphas)
    assert torch.equal(expected.isnan(), found.isnan())
    finite = ~expected.isnan()
    assert torch.equal(expected[finite].view(torch.int16), found[finite].view(torch.int16))


@needs_native
@pytest.mark.parametrize(("change", "error", "name"), ACCUMULATE_ERRORS)
def test_the_public_op_adds_no_check_of_its_own(change, error, name):
    """Each backend checks once: with the native backend active, the public op's error is the native
    op's own (csrc/include/saliency_fast/arg_checks.h), not a second check in Python."""
    a = {**_good(), "reduce": "sum", "partial": None, **change}
    args = (a["grads"], a["weights"], a["x"], a["baseline"], a["reduce"], a["partial"])
    with pytest.raises(error) as public:
        ops.ig_accumulate(*args)
    with pytest.raises(error) as native_error:
        native("ig_accumulate")(*args)
    assert str(public.value) == str(native_error.value)
