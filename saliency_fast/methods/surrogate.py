"""Surrogate-model methods: :class:`LimeBase`, :class:`Lime` and :class:`KernelShap`, with captum's
constructors and ``attribute`` arguments.

Each example's prediction is explained by a linear model fitted to the target's value on random
subsets of its features (the rest set to the baseline). What makes them fast:

- every example of a batch is explained in the same forward passes: up to
  ``perturbations_per_eval`` samples of every example go through one forward, under
  ``torch.inference_mode``;
- a subset drawn twice for one example is evaluated once (KernelSHAP draws many repeats: its
  subset sizes concentrate on 1 and ``n_features - 1``), and so are subsets that differ only in
  features whose removal changes nothing (elements already equal to the baseline: padding,
  special tokens, feature ids an example does not have);
- the random subsets, the perturbed inputs and the default similarity kernels are built for all
  samples at once; the surrogate of every example is fitted at once (:mod:`.linear_models`).

The subsets are drawn from torch's global RNG in captum's order (example by example; LIME as
Bernoulli(0.5) draws, KernelSHAP as a subset size and a Gaussian ranking per sample, and the
numbers captum's surrogate fit takes between examples), so with the same seed the samples, and so
the attributions, are captum's. A captum ``Model`` passed as ``interpretable_model`` may draw
random numbers as it fits: then examples are explained one after the other, as captum does.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from saliency_fast.methods import _common
from saliency_fast.methods.linear_models import LinearRegression, SkLearnLasso
from saliency_fast.methods.perturbation import format_feature_mask, targeted_outputs

_KERNEL_SHAP_INF_WEIGHT = 1e6  # captum's weight of the empty and the full subset


def _display_name(method) -> str:
    """``KernelShap`` -> ``Kernel Shap`` (captum's progress-bar label)."""
    return " ".join(re.findall(r"[A-Z][a-z]*", type(method).__name__))


class _ExpKernel:
    """``exp(-d(x, x')^2 / (2 width^2))`` of the flattened original and perturbed inputs, ``d`` the
    cosine distance or the Euclidean norm; callable per sample as captum calls it, and over a batch
    of samples (``batched``) as our methods do."""

    def __init__(self, distance_mode: str, kernel_width: float) -> None:
        if distance_mode not in ("cosine", "euclidean"):
            raise ValueError(f"distance_mode must be 'cosine' or 'euclidean', got {distance_mode!r}")
        if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, float)) or not kernel_width > 0:
            raise ValueError(f"kernel_width must be a positive number, got {kernel_width!r}")
        self.distance_mode = distance_mode
        self.kernel_width = float(kernel_width)

    def batched(self, original: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Similarities ``(n,)`` of ``n`` flattened float32 rows to their originals."""
        if self.distance_mode == "cosine":
            distance = 1 - torch.nn.functional.cosine_similarity(original, perturbed, dim=1)
        else:
            distance = torch.linalg.vector_norm(original - perturbed, dim=1)
        # float32 exponent, float64 exp (captum: math.exp of a float32 tensor)
        exponent = -1 * distance**2 / (2 * self.kernel_width**2)
        return exponent.double().exp().float()

    def __call__(self, original_inp, perturbed_inp, _interpretable, **kwargs) -> float:
        original = _flatten(original_inp).unsqueeze(0)
        perturbed = _flatten(perturbed_inp).unsqueeze(0)
        return float(self.batched(original, perturbed)[0])


def get_exp_kernel_similarity_function(distance_mode: str = "cosine", kernel_width: float = 1.0) -> _ExpKernel:
    """captum's exponential similarity kernel: ``exp(-d^2 / (2 kernel_width^2))`` with ``d`` the
    cosine distance (``"cosine"``) or the L2 distance (``"euclidean"``) of the flattened inputs."""
    return _ExpKernel(distance_mode, kernel_width)


def _flatten(value) -> torch.Tensor:
    items = value if isinstance(value, tuple) else (value,)
    return torch.cat([t.reshape(-1).float() for t in items])


def default_perturb_func(original_inp, **kwargs) -> torch.Tensor:
    """One LIME sample: each interpretable feature kept with probability 0.5, ``(1, n_features)``."""
    if "num_interp_features" not in kwargs:
        raise ValueError("default_perturb_func needs num_interp_features")
    return _bernoulli_samples(1, kwargs["num_interp_features"], _device_of(original_inp))


def _bernoulli_samples(n: int, n_features: int, device) -> torch.Tensor:
    # on the CPU RNG, as captum draws them: n rows at once give the stream of n one-row draws
    return torch.bernoulli(torch.full((n, n_features), 0.5)).to(device=device).long()


def default_from_interp_rep_transform(curr_sample: torch.Tensor, original_inputs, **kwargs):
    """The model input of an interpretable sample: features kept where the sample is 1, the
    baseline elsewhere (``feature_mask`` and ``baselines`` in ``kwargs``)."""
    if "feature_mask" not in kwargs or "baselines" not in kwargs:
        raise ValueError("default_from_interp_rep_transform needs feature_mask and baselines")
    is_tuple = isinstance(original_inputs, tuple)
    items = original_inputs if is_tuple else (original_inputs,)
    masks = kwargs["feature_mask"] if is_tuple else (kwargs["feature_mask"],)
    baselines = kwargs["baselines"] if is_tuple else (kwargs["baselines"],)
    out = tuple(torch.where(curr_sample[0][m].bool(), x, b) for x, m, b in zip(items, masks, baselines))
    return _common.format_output(is_tuple, out)


def _device_of(value) -> torch.device:
    return (value[0] if isinstance(value, tuple) else value).device


def _cat_inputs(samples: list) -> tuple:
    """Per-sample model inputs (a tensor or a tuple each) concatenated along dim 0."""
    if isinstance(samples[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*samples))
    return (torch.cat(samples),)


def _fit(model, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """captum's protocol: ``fit`` on a DataLoader of one batch, then ``representation()``."""
    model.fit(DataLoader(TensorDataset(x, y, weights), batch_size=x.shape[0]))
    return model.representation()


class LimeBase(_common.AttributionMethod):
    """The general LIME of captum's ``LimeBase``: samples come from ``perturb_func`` (a function or a
    generator function of ``(inputs, **kwargs)``), in the interpretable space when
    ``perturb_interpretable_space`` (mapped to model inputs by ``from_interp_rep_transform``) or in
    the input space (mapped by ``to_interp_rep_transform``). ``interpretable_model`` follows captum's
    ``Model`` interface (``fit`` / ``representation``); :meth:`attribute` returns its
    representation. The user functions run once per sample; the forwards take
    ``perturbations_per_eval`` samples at a time under ``torch.inference_mode``."""

    def __init__(
        self, forward_func, interpretable_model, similarity_func, perturb_func, perturb_interpretable_space: bool,
        from_interp_rep_transform, to_interp_rep_transform,
    ) -> None:
        super().__init__(forward_func)
        for name, value in (("similarity_func", similarity_func), ("perturb_func", perturb_func)):
            if not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        if not all(callable(getattr(interpretable_model, m, None)) for m in ("fit", "representation")):
            raise TypeError("interpretable_model must have fit(train_data) and representation() (captum's Model)")
        if perturb_interpretable_space and from_interp_rep_transform is None:
            raise ValueError("from_interp_rep_transform is needed when perturb_interpretable_space is True")
        if not perturb_interpretable_space and to_interp_rep_transform is None:
            raise ValueError("to_interp_rep_transform is needed when perturb_interpretable_space is False")
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self.perturb_interpretable_space = perturb_interpretable_space
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform

    def attribute(
        self, inputs, target=None, additional_forward_args=None, n_samples: int = 50, perturbations_per_eval: int = 1,
        show_progress: bool = False, **kwargs,
    ):
        _common.check_positive_int("n_samples", n_samples)
        _common.check_positive_int("perturbations_per_eval", perturbations_per_eval)
        formatted, _ = _common.format_inputs(inputs, require_float=False)
        n_rows = formatted[0].shape[0]
        draw = self._sample_source(inputs, kwargs)
        interpretable, model_inputs, similarities = [], [], []
        for _ in range(n_samples):
            try:
                interp, model_input = draw()
            except StopIteration:
                warnings.warn("Generator completed prior to given n_samples iterations!", stacklevel=2)
                break
            interpretable.append(interp)
            model_inputs.append(model_input)
            sim = self.similarity_func(inputs, model_input, interp, **kwargs)
            similarities.append(sim.reshape(-1) if isinstance(sim, torch.Tensor) else torch.tensor([float(sim)]))
        target = _common.Target.parse(target, n_rows)
        args = _common.format_additional_forward_args(additional_forward_args, n_rows)
        outputs = []
        starts = range(0, len(model_inputs), perturbations_per_eval)
        for start in tqdm(starts, disable=not show_progress, desc=f"{_display_name(self)} attribution"):
            batch = model_inputs[start:start + perturbations_per_eval]
            out = targeted_outputs(
                self.forward_func, self.dtype, _cat_inputs(batch), target, _common.repeat_args(args, len(batch)),
                n_rows * len(batch),
            )
            if out.numel() != len(batch):
                raise ValueError(
                    f"forward_func must return one value per perturbed input ({len(batch)} in this batch), got "
                    f"{out.numel()}; with a batch of examples, use Lime or KernelShap, or perturbations_per_eval=1 "
                    "with a forward that returns one value for the batch"
                )
            outputs.append(out.reshape(-1))
        x = torch.cat([i.reshape(1, -1) for i in interpretable]).float()
        y = torch.cat(outputs).float().clone()
        w = torch.cat(similarities).float().to(x.device)
        return _fit(self.interpretable_model, x, y.to(x.device), w)

    def _sample_source(self, inputs, kwargs):
        generator = self.perturb_func(inputs, **kwargs) if inspect.isgeneratorfunction(self.perturb_func) else None

        def draw():
            sample = next(generator) if generator is not None else self.perturb_func(inputs, **kwargs)
            if self.perturb_interpretable_space:
                return sample, self.from_interp_rep_transform(sample, inputs, **kwargs)
            return self.to_interp_rep_transform(sample, inputs, **kwargs), sample

        return draw

    def attribute_future(self):
        raise NotImplementedError(f"{type(self).__name__} does not support attribution of future samples.")


class Lime(LimeBase):
    """LIME (Ribeiro et al., 2016) over feature groups, as ``captum.attr.Lime``: interpretable
    features are the ids of ``feature_mask`` (default: every element its own feature); a sample keeps
    each with probability 0.5 (or as ``perturb_func`` draws) and sets the others to the baseline; the
    surrogate (default: Lasso, alpha 0.01) is weighted by ``similarity_func`` (default: exponential
    kernel of the cosine distance, width 1).

    A batch of examples is explained in shared forwards, each example with its own surrogate, as
    captum does one after the other; when ``forward_func`` returns one value for the whole batch,
    the batch is one example and ``perturbations_per_eval`` must be 1. ``dtype`` autocasts the
    forwards (:class:`~saliency_fast.methods._common.AttributionMethod`).
    """

    _default_model = staticmethod(lambda: SkLearnLasso(alpha=0.01))

    def __init__(self, forward_func, interpretable_model=None, similarity_func=None, perturb_func=None, *,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(
            forward_func,
            self._default_model() if interpretable_model is None else interpretable_model,
            get_exp_kernel_similarity_function() if similarity_func is None else similarity_func,
            default_perturb_func if perturb_func is None else perturb_func,
            True, default_from_interp_rep_transform, None,
        )
        self.dtype = _common.check_autocast_dtype(dtype)

    def attribute(
        self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
        n_samples: int = 25, perturbations_per_eval: int = 1, return_input_shape: bool = True,
        show_progress: bool = False,
    ):
        """Attributions shaped like ``inputs`` (each element gets its feature's coefficient), or with
        ``return_input_shape=False`` the coefficients ``(n_examples, n_features)``."""
        _common.check_positive_int("n_samples", n_samples)
        _common.check_positive_int("perturbations_per_eval", perturbations_per_eval)
        formatted, is_tuple = _common.format_inputs(inputs, require_float=False)
        problem = _Problem(self, formatted, is_tuple, baselines, target, additional_forward_args, feature_mask,
                           perturbations_per_eval)
        if callable(getattr(self.interpretable_model, "fit_many", None)):  # ours: every example at once
            samples = []
            for unit in range(problem.n_units):
                samples.append(self._draw_samples(problem, unit, n_samples))
                _skip_like_captum_fit(problem.n_features)
            coefs = problem.fit(list(range(problem.n_units)), samples, perturbations_per_eval, show_progress)
        else:  # a captum Model may draw random numbers as it fits: examples one after the other, as captum
            coefs = torch.cat([
                problem.fit([unit], [self._draw_samples(problem, unit, n_samples)], perturbations_per_eval,
                            show_progress)
                for unit in range(problem.n_units)
            ])
        if not return_input_shape:
            return coefs
        return _common.format_output(is_tuple, problem.spread(coefs))

    def _draw_samples(self, problem: _Problem, unit: int, n_samples: int) -> torch.Tensor:
        """``(n, n_features)`` 0/1 samples of one example (``n <= n_samples`` when a generator ends)."""
        device = problem.inputs[0].device
        if self.perturb_func is default_perturb_func:
            return _bernoulli_samples(n_samples, problem.n_features, device)
        kwargs = problem.unit_kwargs(unit)
        original = problem.unit_inputs(unit)
        generator = self.perturb_func(original, **kwargs) if inspect.isgeneratorfunction(self.perturb_func) else None
        rows = []
        for _ in range(n_samples):
            try:
                rows.append(next(generator) if generator is not None else self.perturb_func(original, **kwargs))
            except StopIteration:
                warnings.warn("Generator completed prior to given n_samples iterations!", stacklevel=3)
                break
        return torch.cat([r.reshape(1, -1) for r in rows]).to(device).long()

    def weights_from_inputs(self) -> bool:
        """Whether the similarity weights depend on the perturbed inputs alone (not on the sample)."""
        return isinstance(self.similarity_func, _ExpKernel)

    def weights_read_inputs(self) -> bool:
        """Whether :meth:`similarities` reads the perturbed inputs (a user's similarity function may)."""
        return True

    def similarities(self, problem: _Problem, units: torch.Tensor, samples: torch.Tensor, perturbed) -> torch.Tensor:
        """Similarity weights ``(n,)`` of the perturbed inputs ``perturbed`` (per input, ``(n, *unit
        shape)``) of examples ``units`` made by ``samples``."""
        if isinstance(self.similarity_func, _ExpKernel):
            original = torch.cat([x[units].reshape(len(units), -1).float() for x in problem.unit_x], 1)
            flat = torch.cat([p.reshape(len(units), -1).float() for p in perturbed], 1)
            return self.similarity_func.batched(original, flat)
        values = []
        for j, u in enumerate(units.tolist()):
            model_input = tuple(p[j:j + 1] if problem.per_example else p[j] for p in perturbed)
            sim = self.similarity_func(
                problem.unit_inputs(u), _common.format_output(problem.is_tuple, model_input),
                samples[j:j + 1], **problem.unit_kwargs(u),
            )
            values.append(float(sim.reshape(-1)[0]) if isinstance(sim, torch.Tensor) else float(sim))
        return torch.tensor(values, dtype=torch.float32)


class KernelShap(Lime):
    """KernelSHAP (Lundberg & Lee, 2017), as ``captum.attr.KernelShap``: subsets drawn from the
    Shapley kernel (a subset size ``k`` with probability proportional to ``(n-1) / (k (n-k))``, then
    ``k`` features uniformly; the full and the empty subset first, with a large weight), and a
    weighted least-squares surrogate, fitted for every example at once in closed form."""

    _default_model = staticmethod(LinearRegression)

    def __init__(self, forward_func, *, dtype: torch.dtype | None = None) -> None:
        super().__init__(forward_func, dtype=dtype)
        self.inf_weight = _KERNEL_SHAP_INF_WEIGHT

    def attribute(
        self, inputs, baselines=None, target=None, additional_forward_args=None, feature_mask=None,
        n_samples: int = 25, perturbations_per_eval: int = 1, return_input_shape: bool = True,
        show_progress: bool = False,
    ):
        """As :meth:`Lime.attribute`."""
        return super().attribute(
            inputs, baselines, target, additional_forward_args, feature_mask, n_samples, perturbations_per_eval,
            return_input_shape, show_progress,
        )

    def _draw_samples(self, problem: _Problem, unit: int, n_samples: int) -> torch.Tensor:
        n = problem.n_features
        sizes = torch.arange(n, dtype=torch.float)
        probs = torch.tensor(n - 1) / (sizes * (n - sizes))
        probs[0] = 0.0
        distribution = torch.distributions.Categorical(probs)
        rows = [torch.ones(1, n, dtype=torch.long), torch.zeros(1, n, dtype=torch.long)][:n_samples]
        for _ in range(n_samples - len(rows)):  # draws in captum's order: the size, then the ranking
            k = distribution.sample()
            ranks = torch.randn(1, n)
            threshold = torch.kthvalue(ranks, n - k).values.item()
            rows.append((ranks > threshold).long())
        return torch.cat(rows).to(problem.inputs[0].device)

    def weights_from_inputs(self) -> bool:
        return False

    def weights_read_inputs(self) -> bool:
        return False  # the Shapley kernel's weights depend on the subset size alone

    def similarities(self, problem: _Problem, units: torch.Tensor, samples: torch.Tensor, perturbed) -> torch.Tensor:
        kept = samples.sum(1)
        edge = (kept == 0) | (kept == problem.n_features)
        return torch.where(edge, self.inf_weight, 1.0).float()


class _Problem:
    """One ``attribute`` call of :class:`Lime` / :class:`KernelShap`: the formatted inputs, the
    explained units (each example, or the whole batch when the forward returns one value for it),
    the evaluation of samples in shared forwards and the surrogate fits."""

    def __init__(self, method: Lime, inputs, is_tuple, baselines, target, additional_forward_args, feature_mask,
                 perturbations_per_eval: int) -> None:
        self.method = method
        self.inputs = inputs
        self.is_tuple = is_tuple
        self.baselines = _common.format_baselines(_tensor_bools(baselines), inputs, is_tuple)
        self.masks, self.n_features = _feature_masks(feature_mask, inputs, is_tuple)
        n_rows = inputs[0].shape[0]
        self.target = _common.Target.parse(target, n_rows)
        self.args = _common.format_additional_forward_args(additional_forward_args, n_rows)
        self.per_example = True
        self.original_outputs = None  # the unperturbed outputs, per example, when the test below ran
        if n_rows > 1:  # captum's test: one value per example, or one for the whole batch
            test = targeted_outputs(method.forward_func, method.dtype, inputs, self.target, self.args, n_rows)
            if test.numel() == n_rows:
                self.original_outputs = test.reshape(-1).float().clone()
            if test.numel() == 1:
                if perturbations_per_eval != 1:
                    raise ValueError(
                        "forward_func returns one value for the whole batch, so perturbed copies cannot share a "
                        "forward pass: perturbations_per_eval must be 1"
                    )
                self.per_example = False
        if self.per_example:  # unit u = example u
            self.unit_x = inputs
            self.unit_b = self.baselines
            self.unit_m = tuple(m.expand(x.shape) for m, x in zip(self.masks, inputs))
        else:  # one unit: the batch
            self.unit_x = tuple(x.unsqueeze(0) for x in inputs)
            self.unit_b = tuple(b.unsqueeze(0) for b in self.baselines)
            self.unit_m = tuple(m.expand(x.shape).unsqueeze(0) for m, x in zip(self.masks, inputs))
        self.n_units = n_rows if self.per_example else 1

    def unit_inputs(self, unit: int):
        """The inputs of one unit as captum hands them to user functions."""
        if not self.per_example:
            return _common.format_output(self.is_tuple, self.inputs)
        return _common.format_output(self.is_tuple, tuple(x[unit:unit + 1] for x in self.inputs))

    def unit_kwargs(self, unit: int) -> dict:
        if self.per_example:
            masks = tuple(m[unit:unit + 1] if m.shape[0] > 1 else m for m in self.masks)
            baselines = tuple(b[unit:unit + 1] for b in self.baselines)
        else:
            masks, baselines = self.masks, self.baselines
        return {
            "feature_mask": _common.format_output(self.is_tuple, masks),
            "baselines": _common.format_output(self.is_tuple, baselines),
            "num_interp_features": self.n_features,
        }

    def perturbed(self, units: torch.Tensor, samples: torch.Tensor) -> _common.Tensors:
        """Per input, the units ``units`` with the features ``samples`` keeps and the baseline
        elsewhere: ``(n, *unit shape)``."""
        out = []
        for x, b, m in zip(self.unit_x, self.unit_b, self.unit_m):
            ids = m[units]
            kept = torch.gather(samples, 1, ids.reshape(len(units), -1)).reshape(ids.shape).bool()
            out.append(torch.where(kept, x[units], b[units]))
        return tuple(out)

    def fit(self, units: list[int], samples: list[torch.Tensor], perturbations_per_eval: int,
            show_progress: bool) -> torch.Tensor:
        """The surrogate coefficients ``(len(units), n_features)`` of the units ``units`` from their
        ``samples``; up to ``perturbations_per_eval`` samples of each unit go through one forward."""
        # a feature whose elements all equal their baseline (padding, special tokens, ids absent from
        # an example) changes nothing: samples that differ only there share one forward
        distinct = [torch.unique(s | self.null_features(u), dim=0, return_inverse=True) for u, s in zip(units, samples)]
        job_units = torch.cat([torch.full((len(d),), u, dtype=torch.long) for u, (d, _) in zip(units, distinct)])
        rows = torch.cat([d for d, _ in distinct])
        # the subset that keeps every feature is the unperturbed input: its output is known when the
        # test forward ran, so it skips the forwards (its similarity weight is still computed)
        known = rows.bool().all(1) if self.original_outputs is not None else torch.zeros(len(rows), dtype=torch.bool)
        if bool(known.any()):
            outputs, weights = self._evaluate(job_units, rows, perturbations_per_eval * len(units), show_progress,
                                              skip=known)
        else:
            outputs, weights = self._evaluate(job_units, rows, perturbations_per_eval * len(units), show_progress)
        offsets = [0]
        for d, _ in distinct:
            offsets.append(offsets[-1] + len(d))
        xs, ys, ws = [], [], []
        for i, (unit, s, (_, inverse)) in enumerate(zip(units, samples, distinct)):
            index = inverse + offsets[i]
            xs.append(s.float())
            ys.append(outputs[index])
            if weights is not None:
                ws.append(weights[index])
            else:  # weights of the samples themselves (they may differ where the inputs do not)
                at = torch.full((len(s),), unit, dtype=torch.long, device=s.device)
                perturbed = self.perturbed(at, s) if self.method.weights_read_inputs() else None
                ws.append(self.method.similarities(self, at, s, perturbed).to(outputs.device))
        model = self.method.interpretable_model
        device = self.inputs[0].device
        if callable(getattr(model, "fit_many", None)) and len({len(s) for s in samples}) == 1:
            return model.fit_many(torch.stack(xs), torch.stack(ys), torch.stack(ws)).to(device)
        return torch.stack([_fit(model, x, y, w).reshape(-1).float() for x, y, w in zip(xs, ys, ws)]).to(device)

    def null_features(self, unit: int) -> torch.Tensor:
        """``(n_features,)`` 0/1: the features of ``unit`` whose removal changes no element."""
        changed = torch.zeros(self.n_features, device=self.inputs[0].device)
        for x, b, m in zip(self.unit_x, self.unit_b, self.unit_m):
            differs = (x[unit] != b[unit]).reshape(-1).to(changed.dtype)
            changed.index_add_(0, m[unit].reshape(-1), differs)
        return (changed == 0).long()

    def _evaluate(self, units, rows, per_forward: int, show_progress: bool, skip: torch.Tensor | None = None):
        """Targeted outputs of the (unit, sample) pairs, ``per_forward`` rows to a forward pass, and
        their similarity weights when those depend on the inputs alone (else None). Pairs marked in
        ``skip`` keep every feature: their output is the unit's original output, no forward."""
        if skip is not None:
            evaluated = (~skip).nonzero().squeeze(1)
            outputs, weights = self._evaluate(units[evaluated], rows[evaluated], per_forward, show_progress)
            full = self.original_outputs[units].to(outputs.device)
            full[evaluated] = outputs
            if weights is None:
                return full, None
            skipped = skip.nonzero().squeeze(1)
            device = self.inputs[0].device
            at, kept = units[skipped].to(device), rows[skipped].to(device)
            all_weights = torch.empty(len(units), dtype=weights.dtype, device=weights.device)
            all_weights[evaluated] = weights
            all_weights[skipped] = self.method.similarities(self, at, kept, self.perturbed(at, kept)).to(weights.device)
            return full, all_weights
        method = self.method
        if len(units) == 0:
            return torch.empty(0, device=self.inputs[0].device), None
        outputs, weights = [], []
        starts = range(0, len(units), per_forward)
        for start in tqdm(starts, disable=not show_progress, desc=f"{_display_name(method)} attribution"):
            chunk_units = units[start:start + per_forward]
            chunk_rows = rows[start:start + per_forward].to(self.inputs[0].device)
            perturbed = self.perturbed(chunk_units.to(self.inputs[0].device), chunk_rows)
            n = len(chunk_units)
            if self.per_example:
                out = targeted_outputs(
                    method.forward_func, method.dtype, perturbed, self.target.subset(chunk_units),
                    _common.select_args(self.args, chunk_units), n,
                )
            else:  # one perturbed copy of the batch per forward
                out = targeted_outputs(
                    method.forward_func, method.dtype, tuple(p[0] for p in perturbed), self.target, self.args,
                    self.inputs[0].shape[0],
                )
            outputs.append(out.reshape(-1).float())
            if method.weights_from_inputs():
                weights.append(method.similarities(self, chunk_units, chunk_rows, perturbed).to(out.device))
        # outside inference mode: surrogate models that train with autograd may keep them
        device = self.inputs[0].device
        return torch.cat(outputs).clone().to(device), (torch.cat(weights).clone().to(device) if weights else None)

    def spread(self, coefs: torch.Tensor) -> _common.Tensors:
        """Each element gets its feature's coefficient (float32, shaped like the inputs; one row
        when the batch was one unit)."""
        out = []
        for x, m in zip(self.inputs, self.unit_m):
            n = m.shape[0]
            values = torch.gather(coefs.float(), 1, m.reshape(n, -1)).reshape(m.shape)
            out.append(values if self.per_example else values[0][0:1])
        return tuple(out)


def _skip_like_captum_fit(n_features: int) -> None:
    """Take from torch's global RNG what captum's sklearn surrogate fit takes (iterating its
    ``DataLoader`` draws a base seed; the fitted coefficients go into a new ``nn.Linear``, whose
    initialisation draws), so the next example's samples are the ones captum draws."""
    torch.empty((), dtype=torch.int64).random_()
    torch.nn.Linear(n_features, 1)


def _tensor_bools(baselines):
    """Booleans as 0-dim bool tensors (baselines of boolean inputs)."""
    def convert(b):
        return torch.tensor(b) if isinstance(b, bool) else b

    return tuple(convert(b) for b in baselines) if isinstance(baselines, tuple) else convert(baselines)


def _feature_masks(feature_mask, inputs, is_tuple) -> tuple[_common.Tensors, int]:
    """Checked feature masks, ids shifted to start at 0 (with a warning, as captum), and the number
    of interpretable features."""
    masks = format_feature_mask(feature_mask, inputs, is_tuple)
    filled = [m for m in masks if m.numel()]
    if not filled:
        raise ValueError("inputs have no elements to attribute")
    low = min(int(m.min()) for m in filled)
    if feature_mask is not None and low != 0:
        warnings.warn("Minimum element in feature mask is not 0, shifting indices to start at 0.", stacklevel=4)
        masks = tuple(m - low for m in masks)
    n_features = max(int(m.max()) for m in filled) + 1 - (low if feature_mask is not None else 0)
    return tuple(m.long() for m in masks), n_features
