"""Our TracIn classes against captum 0.9.0's on the same model, checkpoints and data (an
independent implementation: captum loops over examples), and their bad-input errors."""

from __future__ import annotations

import pytest
import torch
from captum.influence import TracInCP as CaptumTracInCP
from captum.influence import TracInCPFast as CaptumTracInCPFast
from torch import nn
from torch.utils.data import TensorDataset

from saliency_fast import TracInCP, TracInCPFast, TracInCPFastRandProj


class TokenClassifier(nn.Module):
    """Sequence input through two Linear layers (positions share weights), mean-pooled."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)).mean(1))


def load_checkpoint(model, path):
    saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved["model"])
    return saved["learning_rate"]


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier().double()
    for i, lr in enumerate((0.5, 0.2, 0.1)):
        for p in model.parameters():
            p.data.add_(0.1 * torch.randn_like(p))
        torch.save({"model": model.state_dict(), "learning_rate": lr}, tmp_path / f"checkpoint-{i}.pt")
    x = torch.randn(20, 5, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    test = (torch.randn(4, 5, 6, dtype=torch.float64), torch.randint(0, 3, (4,)))
    return model, TensorDataset(x, y), str(tmp_path), test


@pytest.mark.parametrize("layers", [None, ["inner"], ["inner", "head"]])
def test_tracincp_matches_captum(setup, layers):
    model, data, checkpoints, test = setup
    loss = nn.CrossEntropyLoss(reduction="sum")
    ours = TracInCP(model, data, checkpoints, load_checkpoint, layers=layers, loss_fn=loss, batch_size=7,
                    sample_wise_grads_per_batch=True)
    peer = CaptumTracInCP(model, data, checkpoints, load_checkpoint, layers=layers,
                          loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=7)
    expected = peer.influence(test)
    torch.testing.assert_close(ours.influence(test), expected, rtol=1e-10, atol=1e-12)
    top = ours.influence(test, k=4, proponents=False)
    torch.testing.assert_close(top.influence_scores, expected.topk(4, dim=1, largest=False).values)
    torch.testing.assert_close(ours.self_influence(), peer.self_influence(), rtol=1e-10, atol=1e-12)


def test_fast_and_random_projection_match_captum_fast(setup):
    model, data, checkpoints, test = setup
    loss = nn.CrossEntropyLoss(reduction="mean")
    expected = CaptumTracInCPFast(model, model.head, data, checkpoints, load_checkpoint, loss_fn=loss,
                                  batch_size=6).influence(test)
    fast = TracInCPFast(model, "head", data, checkpoints, load_checkpoint, loss_fn=loss, batch_size=6)
    torch.testing.assert_close(fast.influence(test), expected, rtol=1e-10, atol=1e-12)
    exact = TracInCPFastRandProj(model, model.head, data, checkpoints, load_checkpoint, loss_fn=loss, batch_size=6)
    torch.testing.assert_close(exact.influence(test), expected, rtol=1e-10, atol=1e-12)
    top = exact.influence(test, k=5)
    torch.testing.assert_close(top.influence_scores, expected.topk(5, dim=1).values, rtol=1e-10, atol=1e-12)
    projected = TracInCPFastRandProj(model, model.head, data, checkpoints, load_checkpoint, loss_fn=loss, batch_size=6,
                                     projection_dim=4)
    assert projected.src_intermediate_quantities.shape == (20, 3 * 2 * 2)


def test_unknown_layer(setup):
    model, data, checkpoints, _ = setup
    with pytest.raises(ValueError, match="layers: no module named 'fc9'"):
        TracInCP(model, data, checkpoints, layers=["fc9"], loss_fn=nn.CrossEntropyLoss(reduction="none"))


def test_checkpoint_not_matching_the_model(setup, tmp_path):
    model, data, _, test = setup
    bad = tmp_path / "other.pt"
    torch.save(nn.Linear(6, 2).state_dict(), bad)
    tracin = TracInCP(model, data, [str(bad)], loss_fn=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="does not match the model"):
        tracin.influence(test)


def test_checkpoints_are_not_unpickled(setup, tmp_path):
    model, data, _, test = setup
    evil = tmp_path / "evil.pt"
    torch.save({"inner.weight": torch.zeros(8, 6), "hook": print}, evil)
    tracin = TracInCP(model, data, [str(evil)], loss_fn=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(Exception, match="[Ww]eights only"):
        tracin.influence(test)


def test_factored_dot_equals_the_built_gradients():
    from saliency_fast import ops
    from saliency_fast.influence.gradients import factored_dot

    a1, g1 = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 7, dtype=torch.float64)
    a2, g2 = torch.randn(2, 6, 5, dtype=torch.float64), torch.randn(2, 6, 7, dtype=torch.float64)
    built = ops.per_example_linear_grad(a1, g1).flatten(1) @ ops.per_example_linear_grad(a2, g2).flatten(1).T
    torch.testing.assert_close(factored_dot(a1, g1, a2, g2), built)


@pytest.mark.parametrize("budget, d_in, d_out, expected", [(256, 384, 1536, (16, 16)), (256, 384, 2, (128, 2)),
                                                          (256, 3, 1536, (3, 85)), (256, 4, 2, (4, 2))])
def test_projection_factor_dims(budget, d_in, d_out, expected):
    from saliency_fast.influence.projected import factor_dims

    assert factor_dims(budget, d_in, d_out) == expected


def test_fitted_projection_keeps_gradients_in_the_sample_subspace():
    """Gradients whose factors lie in low-rank subspaces keep their inner products exactly under
    the fitted (PCA) projection; a random one of the same size does not."""
    from saliency_fast.influence.projected import layer_vectors, make_projections

    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    basis_a, basis_g = torch.randn(3, 40, dtype=torch.float64), torch.randn(4, 30, dtype=torch.float64)

    def factors(n):
        return torch.randn(n, 5, 3, dtype=torch.float64) @ basis_a, torch.randn(n, 5, 4, dtype=torch.float64) @ basis_g

    sample, (a, g) = factors(16), factors(6)
    exact = layer_vectors(layer, a, g, None, None)
    fitted = make_projections([("fc", layer)], 16, 0, "pca", [[sample], [factors(16)]], [1.0, 0.5])  # 2 checkpoints
    assert {k: v.shape for k, v in fitted.items()} == {"fc.in": (41, 4), "fc.out": (30, 4)}  # rank 3 + bias, 4
    vectors = layer_vectors(layer, a, g, fitted["fc.in"].double(), fitted["fc.out"].double())
    torch.testing.assert_close(vectors @ vectors.T, exact @ exact.T, rtol=1e-5, atol=0)  # float32 projections
    drawn = make_projections([("fc", layer)], 16, 0, "random")
    rough = layer_vectors(layer, a, g, drawn["fc.in"].double(), drawn["fc.out"].double())
    assert not torch.allclose(rough @ rough.T, exact @ exact.T, rtol=1e-2)


def test_small_layers_are_kept_exact_and_narrow_sides_unprojected():
    from saliency_fast.influence.projected import fitted_dims, make_projections

    layers = [("small", nn.Linear(7, 3)), ("head", nn.Linear(384, 2)), ("wide", nn.Linear(384, 384))]
    drawn = make_projections(layers, 256, 0, "random")
    assert set(drawn) == {"head.in", "wide.in", "wide.out"}  # 3 x 8 fits; the head's 2 outputs stay
    assert fitted_dims(layers, drawn) == {"small": [8, 3], "head": [128, 2], "wide": [16, 16]}
    with pytest.raises(ValueError, match="projection must be one of"):
        make_projections(layers, 256, 0, "gaussian")


@pytest.mark.parametrize("kwargs, match", [(dict(fit_rows=0), "fit_rows must be a positive int"),
                                           (dict(projection="gaussian"), "projection must be one of"),
                                           (dict(projection_dim=0), "projection_dim must be a positive int"),
                                           (dict(engine="spark"), "engine must be one of"),
                                           (dict(actors=0), "actors must be a positive integer")])
def test_index_job_bad_arguments(tmp_path, kwargs, match):
    from saliency_fast.influence.index import build_index

    with pytest.raises(ValueError, match=match):
        build_index(tmp_path, TokenClassifier(), ["inner"], [("unused.pt", 1.0)], load_checkpoint, 4,
                    lambda a, b: None, nn.CrossEntropyLoss(reduction="sum"), data_fingerprint="t", **kwargs)
    assert not any(tmp_path.iterdir())  # refused before any work
