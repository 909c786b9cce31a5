"""Interpretable (surrogate) models for :class:`~saliency_fast.methods.surrogate.Lime` and
:class:`~saliency_fast.methods.surrogate.KernelShap`.

They follow captum's ``Model`` interface (``fit(DataLoader of (x, y, weight))`` then
``representation()`` -> the coefficients ``(1, n_features)``), so captum's own models (e.g.
``captum._utils.models.linear_model.SGDLasso``) can be passed to our ``Lime`` and ours to captum's.
They also have ``fit_many(x, y, weights)``: one fit per example of a batch, ``x`` of shape
``(n_examples, n_samples, n_features)``, returning ``(n_examples, n_features)``. Lime uses it
to fit every example of a batch at once.
"""

from __future__ import annotations

import importlib

import torch


def _tensors_of(train_data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, y, weights)`` concatenated from a DataLoader (or any iterable) of ``(x, y[, w])``."""
    xs, ys, ws = [], [], []
    for batch in train_data:
        if len(batch) not in (2, 3):
            raise ValueError(f"train_data must yield (x, y) or (x, y, weight) batches, got {len(batch)} tensors")
        xs.append(batch[0])
        ys.append(batch[1])
        if len(batch) == 3:
            ws.append(batch[2])
    if not xs:
        raise ValueError("train_data is empty")
    return torch.cat(xs), torch.cat(ys), (torch.cat(ws) if ws else None)


class _SurrogateModel:
    """Shared ``fit`` / ``representation`` of captum's interface over ``fit_many``."""

    def __init__(self) -> None:
        self._coefs: torch.Tensor | None = None

    def fit(self, train_data, **kwargs) -> None:
        if kwargs:
            raise TypeError(f"{type(self).__name__}.fit takes no keyword arguments, got {sorted(kwargs)}")
        x, y, w = _tensors_of(train_data)
        w = torch.ones_like(y) if w is None else w
        self._coefs = self.fit_many(x.unsqueeze(0), y.reshape(1, -1), w.reshape(1, -1))

    def representation(self) -> torch.Tensor:
        if self._coefs is None:
            raise RuntimeError(f"{type(self).__name__} has not been fitted yet")
        return self._coefs

    def fit_many(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LinearRegression(_SurrogateModel):
    """Weighted least squares with an intercept (sklearn's ``LinearRegression`` with
    ``sample_weight``; KernelSHAP's surrogate), solved in closed form in float64 for all examples at
    once: the minimum-norm solution when the samples do not determine every coefficient."""

    def fit_many(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x, y, w = x.double(), y.double(), weights.double()
        total = w.sum(1, keepdim=True)
        x_mean = (w.unsqueeze(2) * x).sum(1, keepdim=True) / total.unsqueeze(2)
        y_mean = (w * y).sum(1, keepdim=True) / total
        root = w.sqrt()
        xc = (x - x_mean) * root.unsqueeze(2)
        yc = (y - y_mean) * root
        coefs = torch.linalg.pinv(xc) @ yc.unsqueeze(2)
        return coefs.squeeze(2).float()


class SkLearnLasso(_SurrogateModel):
    """sklearn's ``Lasso`` (``alpha``, other keyword arguments passed on) fitted with sample
    weights, one example at a time; LIME's default surrogate, as in captum (needs scikit-learn)."""

    def __init__(self, alpha: float = 1.0, **kwargs) -> None:
        super().__init__()
        self.alpha = alpha
        self.kwargs = kwargs

    def fit_many(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        try:
            linear_model = importlib.import_module("sklearn.linear_model")
        except ImportError as error:  # pragma: no cover - scikit-learn is a requirement
            raise ImportError("Lime's default surrogate model needs scikit-learn: pip install scikit-learn (or saliency_fast[lime])") from error
        rows = []
        for xe, ye, we in zip(x, y, weights):
            model = linear_model.Lasso(alpha=self.alpha, **self.kwargs)
            model.fit(xe.float().cpu().numpy(), ye.float().cpu().numpy(), sample_weight=we.float().cpu().numpy())
            rows.append(torch.as_tensor(model.coef_, dtype=torch.float32).reshape(-1))
        return torch.stack(rows).to(x.device)
