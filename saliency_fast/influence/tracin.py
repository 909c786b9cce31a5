"""captum-compatible TracIn: ``TracInCP``, ``TracInCPFast`` and ``TracInCPFastRandProj``.

Same constructors, ``influence(inputs, k=None, proponents=True)``, ``self_influence(...)`` and
``compute_intermediate_quantities(...)`` as ``captum.influence``, the same scores. What differs
is how they are computed:

- per-example gradients of Linear layers come from one batched backward and the native
  ``per_example_linear_grad`` op (captum loops over examples unless
  ``sample_wise_grads_per_batch``), other layers from one autograd call per example;
- checkpoints are the outer loop: each is loaded once per call (captum reloads every checkpoint
  for every training batch);
- ``TracInCPFastRandProj`` searches with FAISS (:class:`~saliency_fast.influence.search.InnerProductIndex`)
  instead of Annoy, so the default needs no extra package and is exact.

TracIn score of training example z on test example z':
``sum_checkpoints lr_c * <grad loss(z'; theta_c), grad loss(z; theta_c)>``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from saliency_fast import ops
from saliency_fast.influence import gradients as grads_lib
from saliency_fast.influence import shared_forward
from saliency_fast.influence.checkpoints import checkpoint_paths, load_flexible_state_dict
from saliency_fast.influence.search import InnerProductIndex


class KMostInfluentialResults(NamedTuple):
    """captum's result of ``influence(..., k=...)``: ``indices`` and ``influence_scores``, each
    ``[n_test, k]``, the most influential first."""

    indices: torch.Tensor
    influence_scores: torch.Tensor


class _SingleBatch(Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __getitem__(self, i):
        return self.batch

    def __len__(self):
        return 1


def format_inputs(inputs) -> DataLoader:
    """A DataLoader stays; a tuple (features..., labels) becomes a one-batch loader (captum)."""
    if isinstance(inputs, DataLoader):
        return inputs
    return DataLoader(_SingleBatch(inputs), batch_size=None, shuffle=False)


def check_loss_fn(loss_fn, name: str, sample_wise_grads_per_batch: bool = True) -> str:
    """The reduction of ``loss_fn`` as captum reads it: its ``reduction`` attribute, or (none) an
    assumed sum when batches are reduced, else a per-example loss."""
    if loss_fn is None:
        return "sum"
    if not callable(loss_fn):
        raise TypeError(f"{name} must be callable, got {type(loss_fn).__name__}")
    if hasattr(loss_fn, "reduction"):
        reduction = loss_fn.reduction
        if sample_wise_grads_per_batch:
            assert reduction in ("sum", "mean"), (
                f'reduction for `{name}` must be "sum" or "mean" when `sample_wise_grads_per_batch` is True'
            )
            return str(reduction)
        assert reduction == "none", f'reduction for `{name}` must be "none" when `sample_wise_grads_per_batch` is False'
        return "none"
    if sample_wise_grads_per_batch:
        warnings.warn(
            f"Since `{name}` has no 'reduction' attribute, it is assumed to sum the per-example losses; "
            f'set `{name}.reduction = "mean"` if it takes their mean.',
            stacklevel=3,
        )
        return "sum"
    warnings.warn(
        f'Since `{name}` has no "reduction" attribute, it is assumed to be a "per-example" loss function.',
        stacklevel=3,
    )
    return "none"


def _progress(iterable, show: bool, desc: str, total=None):
    if not show:
        return iterable
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    return tqdm(iterable, desc=desc, total=total)


class TracInCPBase:
    """Constructor arguments, checkpoints and the k-most-influential search shared by the three."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset | DataLoader,
        checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], float] = load_flexible_state_dict,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.checkpoints = checkpoints
        self.checkpoints_load_func = checkpoints_load_func
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.batch_size = batch_size
        if isinstance(train_dataset, DataLoader):
            self.train_dataloader = train_dataset
        else:
            assert isinstance(batch_size, int), (
                "since the `train_dataset` argument was a `Dataset`, `batch_size` must be an int."
            )
            self.train_dataloader = DataLoader(train_dataset, batch_size, shuffle=False)
        try:
            self.train_dataloader_len = len(self.train_dataloader)
        except TypeError:
            self.train_dataloader_len = None
            warnings.warn(
                "Unable to determine the number of batches in training dataset `train_dataset`; "
                "progress shows batches processed only.",
                stacklevel=2,
            )

    @property
    def checkpoints(self) -> list:
        return self._checkpoints

    @checkpoints.setter
    def checkpoints(self, checkpoints) -> None:
        self._checkpoints = checkpoint_paths(checkpoints)

    @classmethod
    def get_name(cls) -> str:
        return cls.__name__

    def _load(self, checkpoint) -> float:
        assert checkpoint is not None, "None returned from `checkpoints`, cannot load."
        return self.checkpoints_load_func(self.model, checkpoint)

    # -- scores, checkpoint by checkpoint -------------------------------------------------------

    def _batch_quantities(self, batch, test: bool) -> Any:
        """This checkpoint's per-example quantities of one batch (subclasses)."""
        raise NotImplementedError

    def _pair_scores(self, test_q, train_q) -> torch.Tensor:
        """``[n_test, n_train]`` gradient dot products of two batches' quantities (subclasses)."""
        raise NotImplementedError

    def _self_scores(self, q) -> torch.Tensor:
        raise NotImplementedError

    def _aggregate(self, q) -> Any:
        raise NotImplementedError("aggregate=True is supported by TracInCP only")

    def _gradient_layers(self) -> tuple[list[str], list[nn.Parameter]]:
        """The names of the modules whose gradients are taken, and their parameters (subclasses)."""
        raise NotImplementedError

    def _checkpoint_states(self):
        """Every checkpoint loaded once; within it, the modules all checkpoints share run once per
        batch (see :mod:`saliency_fast.influence.shared_forward`), so callers loop over batches
        outside and checkpoints inside."""
        names, params = self._gradient_layers()
        return shared_forward.checkpoints_shared(self.model, self.checkpoints, lambda _, c: self._load(c), names,
                                                 params)

    def _test_quantities(self, inputs, states, aggregate: bool = False) -> list:
        """Per checkpoint: (learning rate, the test batches' quantities, concatenated)."""
        per_batch = []
        for batch in format_inputs(inputs):
            row = []
            for c in range(len(states)):
                states.activate(c)
                row.append(self._batch_quantities(batch, test=True))
            per_batch.append(row)
        per_checkpoint = []
        for c, lr in enumerate(states.loaded):
            q = self._concat([row[c] for row in per_batch])
            per_checkpoint.append((lr, self._aggregate(q) if aggregate else q))
        return per_checkpoint

    @staticmethod
    def _concat(batches: list):
        if isinstance(batches[0], torch.Tensor):
            return torch.cat(batches)
        return type(batches[0])(torch.cat(parts) for parts in zip(*batches))

    def _score_train(self, test_quantities: list, states, show_progress: bool, desc: str) -> torch.Tensor:
        """``[n_test, n_train]`` TracIn scores: training batches outer, checkpoints inner."""
        columns = []
        for batch in _progress(self.train_dataloader, show_progress, desc, self.train_dataloader_len):
            total = None
            for c, (lr, test_q) in enumerate(test_quantities):
                states.activate(c)
                scores = self._pair_scores(test_q, self._batch_quantities(batch, test=False)) * lr
                total = scores if total is None else total + scores
            columns.append(total)
        return torch.cat(columns, dim=1)

    def _influence(self, inputs, show_progress: bool = False, aggregate: bool = False) -> torch.Tensor:
        desc = f"Using {self.get_name()} to compute influence for training batches"
        with self._checkpoint_states() as states:
            return self._score_train(self._test_quantities(inputs, states, aggregate), states, show_progress, desc)

    def _get_k_most_influential(
        self, inputs, k: int = 5, proponents: bool = True, show_progress: bool = False, aggregate: bool = False
    ) -> KMostInfluentialResults:
        desc = (
            f"Using {self.get_name()} to perform computation for getting "
            f"{'proponents' if proponents else 'opponents'}. Processing training batches"
        )
        with self._checkpoint_states() as states:
            scores = self._score_train(self._test_quantities(inputs, states, aggregate), states, show_progress, desc)
        values, indices = torch.topk(scores, min(k, scores.shape[1]), dim=1, largest=proponents)
        return KMostInfluentialResults(indices, values)

    def influence(self, inputs, k: int | None = None, proponents: bool = True, show_progress: bool = False, **kw):
        """Scores ``[n_test, n_train]`` (``k`` None), or the ``k`` proponents (opponents when
        ``proponents`` is False) of each test example as :class:`KMostInfluentialResults`."""
        assert inputs is not None, (
            "`inputs` argument is required. If you wish to calculate self influence scores, "
            "please use the `self_influence` method instead."
        )
        if k is None:
            return self._influence(inputs, show_progress=show_progress, **kw)
        return self._get_k_most_influential(inputs, k, proponents, show_progress=show_progress, **kw)

    def _self_influence_by_checkpoints(self, inputs, show_progress: bool = False) -> torch.Tensor:
        loader = format_inputs(inputs)
        total = None
        checkpoints = _progress(
            self.checkpoints, show_progress, f"Using {self.get_name()} to compute self influence. Processing checkpoint"
        )
        for checkpoint in checkpoints:
            lr = self._load(checkpoint)
            batches = _progress(
                loader, show_progress, f"Using {self.get_name()} to compute self influence. Processing batch"
            )
            scores = torch.cat([self._self_scores(self._batch_quantities(b, test=False)) for b in batches]) * lr
            total = scores if total is None else total + scores
        return total

    def _self_influence_by_batches(self, inputs, show_progress: bool = False) -> torch.Tensor:
        """Batches outer, checkpoints inner (each loaded once; shared modules run once a batch)."""
        batches = _progress(
            format_inputs(inputs), show_progress, f"Using {self.get_name()} to compute self influence. Processing batch"
        )
        rows = []
        with self._checkpoint_states() as states:
            for batch in batches:
                total = None
                for c, lr in enumerate(states.loaded):
                    states.activate(c)
                    scores = self._self_scores(self._batch_quantities(batch, test=False)) * lr
                    total = scores if total is None else total + scores
                rows.append(total)
        return torch.cat(rows)

    def self_influence(self, inputs=None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False):
        """Each example's influence on itself, ``sum_c lr_c |grad|^2`` (the training set when
        ``inputs`` is None)."""
        inputs = self.train_dataloader if inputs is None else inputs
        if outer_loop_by_checkpoints:
            return self._self_influence_by_checkpoints(inputs, show_progress)
        return self._self_influence_by_batches(inputs, show_progress)


class _LinearFactors:
    """A batch's per-example Linear-layer gradients kept as their factors (input activations and
    output gradients per layer): pair scores use :func:`gradients.factored_dot` where it is cheaper
    than building the gradients, which are built (with the native op) only where it is not."""

    def __init__(self, layers, factors):
        self.layers = layers
        self.factors = factors
        self._weights: dict[int, torch.Tensor] = {}

    @classmethod
    def concat(cls, parts: list[_LinearFactors]) -> _LinearFactors:
        """Batches joined along examples; shorter sequences padded with zero positions (which
        add nothing to any gradient)."""
        factors = [tuple(grads_lib.cat_steps([p.factors[i][j] for p in parts]) for j in range(2))
                   for i in range(len(parts[0].factors))]
        return cls(parts[0].layers, factors)

    def weight(self, i: int) -> torch.Tensor:
        if i not in self._weights:
            a, g = self.factors[i]
            self._weights[i] = ops.per_example_linear_grad(a, g).flatten(1)
        return self._weights[i]

    def flat(self) -> tuple[torch.Tensor, ...]:
        """Every parameter's per-example gradient, flattened, in ``module.parameters()`` order."""
        out = []
        for i, (_, module) in enumerate(self.layers):
            out.append(self.weight(i))
            if module.bias is not None:
                out.append(self.factors[i][1].sum(1).to(out[-1].dtype))
        return tuple(out)

    def dot(self, other: _LinearFactors) -> torch.Tensor:
        total = 0
        for i, (_, module) in enumerate(self.layers):
            (a1, g1), (a2, g2) = self.factors[i], other.factors[i]
            if grads_lib.factored_is_cheaper(a1.shape[1], a2.shape[1], module.in_features, module.out_features):
                total = total + grads_lib.factored_dot(a1, g1, a2, g2)
            else:
                total = total + self.weight(i) @ other.weight(i).to(self.weight(i).dtype).T
            if module.bias is not None:
                total = total + g1.sum(1) @ g2.sum(1).to(g1.dtype).T
        return total

    def self_dot(self) -> torch.Tensor:
        total = 0
        for i, (_, module) in enumerate(self.layers):
            a, g = self.factors[i]
            if grads_lib.factored_is_cheaper(a.shape[1], a.shape[1], module.in_features, module.out_features):
                total = total + (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2))
            else:
                total = total + self.weight(i).square().sum(1)
            if module.bias is not None:
                total = total + g.sum(1).square().sum(1)
        return total


class TracInCP(TracInCPBase):
    """TracIn with exact per-example gradients of ``layers`` (all layers when None)."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset | DataLoader,
        checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], float] = load_flexible_state_dict,
        layers: list[str] | None = None,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
        sample_wise_grads_per_batch: bool = False,
    ) -> None:
        super().__init__(model, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size, test_loss_fn)
        self.sample_wise_grads_per_batch = sample_wise_grads_per_batch
        self.reduction_type = check_loss_fn(loss_fn, "loss_fn", sample_wise_grads_per_batch)
        self.test_reduction_type = (
            self.reduction_type
            if test_loss_fn is None
            else check_loss_fn(test_loss_fn, "test_loss_fn", sample_wise_grads_per_batch)
        )
        self.layers = layers
        self._layers = grads_lib.resolve_layers(model, layers)
        self.layer_modules = None if layers is None else [m for _, m in self._layers]

    def _gradient_layers(self) -> tuple[list[str], list[nn.Parameter]]:
        return [name for name, _ in self._layers], grads_lib.layer_parameters(self._layers)

    def _batch_quantities(self, batch, test: bool):
        loss_fn = self.test_loss_fn if test else self.loss_fn
        reduction = self.test_reduction_type if test else self.reduction_type
        if loss_fn is None:
            raise ValueError("loss_fn is required to compute gradients")
        inputs, targets = tuple(batch[:-1]), batch[-1]
        if grads_lib.all_linear(self._layers):
            return _LinearFactors(
                self._layers, grads_lib.linear_factors(self.model, self._layers, inputs, targets, loss_fn, reduction)
            )
        grads = grads_lib.looped_gradients(self.model, self._layers, inputs, targets, loss_fn, reduction)
        return tuple(g.flatten(1) for g in grads)

    def _concat(self, batches: list):
        if isinstance(batches[0], _LinearFactors):
            return _LinearFactors.concat(batches)
        return super()._concat(batches)

    @staticmethod
    def _flat(q) -> tuple[torch.Tensor, ...]:
        return q.flat() if isinstance(q, _LinearFactors) else q

    def _pair_scores(self, test_q, train_q) -> torch.Tensor:
        if isinstance(test_q, _LinearFactors) and isinstance(train_q, _LinearFactors):
            return test_q.dot(train_q)
        return sum(t.to(s.dtype) @ s.T for t, s in zip(self._flat(test_q), self._flat(train_q)))

    def _self_scores(self, q) -> torch.Tensor:
        if isinstance(q, _LinearFactors):
            return q.self_dot()
        return sum(g.square().sum(1) for g in q)

    def _aggregate(self, q):
        return tuple(g.sum(0, keepdim=True) for g in self._flat(q))

    def compute_intermediate_quantities(self, inputs, aggregate: bool = False) -> torch.Tensor:
        """Per example, its gradients of every checkpoint (times the learning rate, as captum)
        concatenated: ``[n, n_checkpoints * n_params]`` (one row when ``aggregate``)."""
        return torch.cat(
            [lr * torch.cat(self._flat(q), dim=1) for lr, q in self._test_quantities_with(inputs, aggregate, test=False)],
            dim=1,
        )

    def _test_quantities_with(self, inputs, aggregate: bool, test: bool) -> list:
        loader = format_inputs(inputs)
        out = []
        for checkpoint in self.checkpoints:
            lr = self._load(checkpoint)
            q = self._concat([self._batch_quantities(batch, test=test) for batch in loader])
            out.append((lr, self._aggregate(q) if aggregate else q))
        return out


class TracInCPFast(TracInCPBase):
    """TracIn on the last fully connected layer's weight: a training/test pair scores
    ``(g . g') (a . a')`` from the layer's output gradients g and inputs a, no gradient built."""

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: nn.Module | str,
        train_dataset: Dataset | DataLoader,
        checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], float] = load_flexible_state_dict,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
        vectorize: bool = False,
    ) -> None:
        super().__init__(model, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size, test_loss_fn)
        self.vectorize = vectorize
        self.final_fc_layer = final_fc_layer
        for param in self.final_fc_layer.parameters():
            param.requires_grad = True
        assert loss_fn is not None, "loss function must not be none"
        self.reduction_type = check_loss_fn(loss_fn, "loss_fn")
        self.test_reduction_type = (
            self.reduction_type if test_loss_fn is None else check_loss_fn(test_loss_fn, "test_loss_fn")
        )

    @property
    def final_fc_layer(self) -> nn.Module:
        return self._final_fc_layer

    @final_fc_layer.setter
    def final_fc_layer(self, layer: nn.Module | str) -> None:
        if isinstance(layer, str):
            modules = dict(self.model.named_modules())
            if layer not in modules:
                raise ValueError(f'Invalid final_fc_layer str: "{layer}" provided!')
            layer = modules[layer]
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"final_fc_layer must be an nn.Linear (or its name), got {type(layer).__name__}")
        self._final_fc_layer = layer

    def _capture(self, batch, test: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The final layer's output gradients ``[N, d_out]`` and inputs ``[N, d_in]``."""
        loss_fn = self.test_loss_fn if test else self.loss_fn
        reduction = self.test_reduction_type if test else self.reduction_type
        assert reduction in ("sum", "mean"), 'reduction_type must be either "mean" or "sum"'
        (capture,), _ = grads_lib.capture_output_grads(self.model, [("final_fc_layer", self.final_fc_layer)],
                                                       tuple(batch[:-1]), batch[-1], loss_fn, reduction)
        return capture.output_grads.flatten(1), capture.activations.flatten(1)

    def _gradient_layers(self) -> tuple[list[str], list[nn.Parameter]]:
        names = [name for name, m in self.model.named_modules() if m is self.final_fc_layer]
        return names, list(self.final_fc_layer.parameters())

    def _batch_quantities(self, batch, test: bool):
        return self._capture(batch, test)

    def _pair_scores(self, test_q, train_q) -> torch.Tensor:
        (g_test, a_test), (g_train, a_train) = test_q, train_q
        return (g_test @ g_train.T) * (a_test @ a_train.T)

    def _self_scores(self, q) -> torch.Tensor:
        g, a = q
        return g.square().sum(1) * a.square().sum(1)

    def influence(self, inputs, k: int | None = None, proponents: bool = True, show_progress: bool = False):
        return super().influence(inputs, k, proponents, show_progress)


class TracInCPFastRandProj(TracInCPFast):
    """:class:`TracInCPFast` with each training example's final-layer gradient (randomly
    projected to about ``projection_dim`` when that is smaller) stored once and searched by
    inner product: FAISS unless ``nearest_neighbors`` is given."""

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: nn.Module | str,
        train_dataset: Dataset | DataLoader,
        checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], float] = load_flexible_state_dict,
        loss_fn: Callable | None = None,
        batch_size: int | None = 1,
        test_loss_fn: Callable | None = None,
        vectorize: bool = False,
        nearest_neighbors=None,
        projection_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model, final_fc_layer, train_dataset, checkpoints, checkpoints_load_func, loss_fn, batch_size,
            test_loss_fn, vectorize,
        )
        if projection_dim is not None and (not isinstance(projection_dim, int) or projection_dim < 1):
            raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
        self.nearest_neighbors = InnerProductIndex() if nearest_neighbors is None else nearest_neighbors
        self.projection_dim = projection_dim
        torch.manual_seed(seed)  # captum's projections, drawn the same way
        self.projection_quantities = self._projections()
        self.src_intermediate_quantities = self._intermediate(self.train_dataloader, test=False)
        self.nearest_neighbors.setup(self.src_intermediate_quantities)

    def _projections(self):
        if self.projection_dim is None:
            return None
        self._load(self.checkpoints[0])
        g, a = self._capture(next(iter(self.train_dataloader)), test=False)
        d_out, d_in = g.shape[1], a.shape[1]
        if d_out * d_in <= self.projection_dim:
            return None
        k_out = min(int(self.projection_dim**0.5), d_out)
        k_in = min(int(self.projection_dim**0.5), d_in)
        p_out = torch.normal(torch.zeros(d_out, k_out), 1.0 / k_out**0.5)
        p_in = torch.normal(torch.zeros(d_in, k_in), 1.0 / k_in**0.5)
        return p_out.to(g), p_in.to(a)

    def _intermediate(self, inputs, test: bool) -> torch.Tensor:
        """Per example: ``sqrt(lr) * vec((g P_out)^T (a P_in))`` of each checkpoint, concatenated."""
        loader = format_inputs(inputs)
        p_out, p_in = self.projection_quantities or (None, None)
        parts = []
        for checkpoint in self.checkpoints:
            root = self._load(checkpoint) ** 0.5
            rows = []
            for batch in loader:
                g, a = self._capture(batch, test)
                rows.append(ops.per_example_linear_grad(a[:, None], g[:, None], p_in, p_out).flatten(1) * root)
            parts.append(torch.cat(rows))
        return torch.cat(parts, dim=1)

    def _influence(self, inputs, show_progress: bool = False) -> torch.Tensor:
        return self._intermediate(inputs, test=True) @ self.src_intermediate_quantities.T

    def _get_k_most_influential(self, inputs, k: int = 5, proponents: bool = True, show_progress: bool = False):
        queries = self._intermediate(inputs, test=True)
        sign = 1 if proponents else -1
        indices, scores = self.nearest_neighbors.get_nearest_neighbors(queries * sign, k)
        return KMostInfluentialResults(indices, scores * sign)

    def influence(self, inputs=None, k: int | None = None, proponents: bool = True, show_progress: bool = False):
        return super().influence(inputs, k, proponents, show_progress)

    def self_influence(self, inputs=None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False):
        warnings.warn(
            "TracInCPFastRandProj stores nothing that helps self influence; use TracInCPFast for it.", stacklevel=2
        )
        raise NotImplementedError

    def compute_intermediate_quantities(self, inputs) -> torch.Tensor:
        return self._intermediate(inputs, test=False)
