"""Checkpoints that share a frozen prefix: the shared modules are found by comparing the
checkpoints' tensors, run once per batch for all checkpoints, and the scores stay captum's."""

from __future__ import annotations

import pytest
import torch
from captum.influence import TracInCP as CaptumTracInCP
from torch import nn
from torch.utils.data import TensorDataset

from saliency_fast import TracInCP
from saliency_fast.influence import index as index_lib
from saliency_fast.influence import shared_forward


class CountingEncoder(nn.Module):
    """A Linear + tanh encoder that counts how often its forward really runs."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.tanh(self.proj(x))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = CountingEncoder()
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.block(self.encoder(x))).mean(1))


def load_checkpoint(model, path):
    saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved["model"])
    return saved["learning_rate"]


def save_checkpoints(model, directory, trained) -> list[tuple[str, float]]:
    """Three checkpoints in which only the parameters of the modules in ``trained`` change."""
    out = []
    for i, lr in enumerate((0.5, 0.2, 0.1)):
        for name, p in model.named_parameters():
            if name.split(".")[0] in trained:
                p.data.add_(0.1 * torch.randn_like(p))
        path = directory / f"checkpoint-{i}.pt"
        torch.save({"model": model.state_dict(), "learning_rate": lr}, path)
        out.append((str(path), lr))
    return out


@pytest.fixture
def head_only(tmp_path):
    torch.manual_seed(0)
    model = Classifier().double().eval()  # modules in training mode are never memoized
    checkpoints = save_checkpoints(model, tmp_path, {"head"})
    x = torch.randn(20, 5, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    test = (torch.randn(4, 5, 6, dtype=torch.float64), torch.randint(0, 3, (4,)))
    return model, checkpoints, TensorDataset(x, y), test


def test_varying_tensors_and_shared_modules(head_only):
    model, checkpoints, _, _ = head_only
    states = shared_forward.CheckpointStates(model, [p for p, _ in checkpoints], load_checkpoint)
    assert states.loaded == [0.5, 0.2, 0.1]
    assert states.varying == {"head.weight", "head.bias"}
    assert shared_forward.shared_modules(model, states.varying, ["block", "head"]) == ["encoder"]
    # a layer inside a module keeps that module out; a varying tensor too
    assert shared_forward.shared_modules(model, states.varying, ["encoder.proj"]) == ["block"]
    for c, (path, _) in enumerate(checkpoints):  # activate(c) is exactly checkpoint c
        states.activate(c)
        saved = torch.load(path, weights_only=True)["model"]
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)


@pytest.mark.parametrize("trained, encoder_calls", [({"head"}, 1 + 3), ({"encoder", "block", "head"}, 3 * (1 + 3))])
def test_shared_modules_run_once_per_batch_and_scores_equal_captum(tmp_path, trained, encoder_calls):
    """Only the head trains: the encoder runs once per batch (one test batch, three training
    batches); everything trains: once per batch and checkpoint. captum's scores either way."""
    torch.manual_seed(1)
    model = Classifier().double().eval()
    paths = [p for p, _ in save_checkpoints(model, tmp_path, trained)]
    data = TensorDataset(torch.randn(20, 5, 6, dtype=torch.float64), torch.randint(0, 3, (20,)))
    test = (torch.randn(4, 5, 6, dtype=torch.float64), torch.randint(0, 3, (4,)))
    peer = CaptumTracInCP(model, data, paths, load_checkpoint, layers=["block", "head"],
                          loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=7).influence(test)
    model.encoder.calls = 0
    ours = TracInCP(model, data, paths, load_checkpoint, layers=["block", "head"],
                    loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=7,
                    sample_wise_grads_per_batch=True).influence(test)
    torch.testing.assert_close(ours, peer, rtol=1e-10, atol=1e-12)
    assert model.encoder.calls == encoder_calls
    assert all(p.requires_grad for p in model.parameters())  # the gradient scope is undone


def test_memo_ignores_outputs_changed_in_place_and_training_mode():
    module = CountingEncoder().double().eval()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    with shared_forward.gradient_scope(module, [], ["proj"]) as (memo,):
        first = module.proj(x)
        assert module.proj(x.clone()) is first and memo.hits == 1  # equal values, another tensor
        first.add_(1)  # changed in place: recomputed
        torch.testing.assert_close(module.proj(x), first - 1)
        module.train()  # dropout could make two calls differ: never reused
        out = module.proj(x)
        assert module.proj(x) is not out
    assert "forward" not in module.proj.__dict__  # the class's forward is back


def test_index_with_shared_prefix_equals_exact_tracin(head_only, tmp_path):
    model, checkpoints, data, test = head_only
    x, y = data.tensors
    loss = nn.CrossEntropyLoss(reduction="sum")
    layers = ["block", "head"]
    out = tmp_path / "index"
    index_lib.build_index(out, model, layers, checkpoints, load_checkpoint, len(x), lambda a, b: ((x[a:b],), y[a:b]),
                          loss, data_fingerprint="t", projection_dim=None, shard_size=8, batch_size=3, progress=False)
    queries = index_lib.query_vectors(model, out, load_checkpoint, len(test[0]),
                                      lambda a, b: ((test[0][a:b],), test[1][a:b]), loss, batch_size=3)
    scores = queries @ index_lib.open_index(out, backend="torch").vectors().T
    expected = TracInCP(model, data, [p for p, _ in checkpoints], load_checkpoint, layers=layers, loss_fn=loss,
                        batch_size=5, sample_wise_grads_per_batch=True).influence(test)
    torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-6)


def test_fitted_index_vectors_equal_the_direct_projected_gradients(head_only, tmp_path):
    """The rows the projection is fitted on give shard 0's first vectors; every stored vector is
    still sqrt(lr) times the projected gradient computed directly."""
    from safetensors.torch import load_file

    from saliency_fast.influence import projected

    model, checkpoints, data, _ = head_only
    x, y = data.tensors
    loss = nn.CrossEntropyLoss(reduction="sum")
    out = tmp_path / "index"
    meta = index_lib.build_index(out, model, ["block", "head"], checkpoints, load_checkpoint, len(x),
                                 lambda a, b: ((x[a:b],), y[a:b]), loss, data_fingerprint="t", projection_dim=16,
                                 fit_rows=8, shard_size=12, batch_size=4, progress=False)
    assert meta["job"]["projection"] == "pca" and meta["layer_dims"]["head"][1] <= 3
    projections = index_lib.load_projections(out)
    layers = projected.check_linear_layers(model, ["block", "head"])
    for c, (path, lr) in enumerate(checkpoints):
        load_checkpoint(model, path)
        direct = projected.projected_gradients(model, layers, projections, (x,), y, loss) * lr**0.5
        stored = torch.cat([load_file(index_lib.shard_path(out, c, s))["vectors"] for s in range(2)])
        torch.testing.assert_close(stored, direct, rtol=1e-5, atol=1e-6)
