"""Explainer.influence and `saliency-fast influence` on a tiny BERT classifier: exact scores equal
captum 0.9.0's TracInCP over the same layers and checkpoints, bad input errors, the HTML view
escapes text, and a job killed by SIGKILL resumes with every shard written once and unchanged."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from captum.influence import TracInCP as CaptumTracInCP
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from saliency_fast import Explainer
from saliency_fast.hf.influence import last_block_linear_layers
from tests.tiny_models import bert_tokenizer, tiny_bert

TRAIN = [f"review {i}: the film was {'good' if i % 3 else 'bad'} and {'long' if i % 2 else 'short'}" for i in range(24)]
LABELS = [int(i % 3 != 0) for i in range(24)]
TEST = ["a good film", "bad and long <b>&amp;"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny BERT classifier (float64) and two checkpoints with learning rates 0.3, 0.1."""
    torch.manual_seed(0)
    model = tiny_bert(num_labels=2).double()
    directory = tmp_path_factory.mktemp("checkpoints")
    paths = []
    for i, lr in enumerate((0.3, 0.1)):
        for p in model.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        path = directory / f"step-{i}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        paths.append((str(path), lr))
    return model, paths


def test_default_layers_are_last_block_and_head(classifier):
    model, _ = classifier
    assert last_block_linear_layers(model) == [
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.key",
        "bert.encoder.layer.1.attention.self.value", "bert.encoder.layer.1.attention.output.dense",
        "bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense", "classifier",
    ]


class _Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _captum_scores(model, checkpoints, layers, test_labels):
    tok = bert_tokenizer()
    train = tok(TRAIN, padding=True, return_tensors="pt")
    test = tok(TEST, padding=True, return_tensors="pt")

    def load(wrapper, path):
        wrapper.model.load_state_dict(load_file(path))
        return dict(checkpoints)[path]

    wrapper = _Logits(model)
    tracin = CaptumTracInCP(
        wrapper, TensorDataset(train["input_ids"], train["attention_mask"], torch.tensor(LABELS)),
        [p for p, _ in checkpoints], load, layers=[f"model.{name}" for name in layers],
        loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=8,
    )
    return tracin.influence((test["input_ids"], test["attention_mask"], torch.tensor(test_labels)))


def test_exact_scores_equal_captum(classifier, tmp_path):
    model, checkpoints = classifier
    explainer = Explainer(model, bert_tokenizer())
    results = explainer.influence(TRAIN, LABELS, TEST, k=5, projection_dim=None, checkpoints=checkpoints,
                                  output=tmp_path / "job", backend="torch", batch_size=8)
    expected = _captum_scores(model, checkpoints, last_block_linear_layers(model), [r.predicted for r in results])
    for q, result in enumerate(results):
        # the index stores float32 vectors: scores agree to float32 precision, and near-ties may swap
        for found, largest in ((result.proponents, True), (result.opponents, False)):
            scores = torch.tensor([p.score for p in found], dtype=torch.float64)
            torch.testing.assert_close(scores, expected[q].topk(5, largest=largest).values, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(expected[q][[p.index for p in found]], scores, rtol=1e-5, atol=1e-6)
            assert all(p.text == TRAIN[p.index] and p.label == LABELS[p.index] for p in found)
    assert results[0].metadata["index"] == "torch" and results[0].metadata["projection_dim"] is None


def test_projected_mode_and_faiss(classifier):
    pytest.importorskip("faiss")
    model, checkpoints = classifier
    explainer = Explainer(model, bert_tokenizer())
    exact = explainer.influence(TRAIN, LABELS, TEST, k=5, projection_dim=None, checkpoints=checkpoints)
    projected = explainer.influence(TRAIN, LABELS, TEST, k=5, projection_dim=64, checkpoints=checkpoints,
                                    backend="faiss-cpu")
    assert projected[0].metadata["index"] == "faiss-cpu"
    # at most 64 numbers per layer, fitted to the training gradients: the exact top examples found
    assert projected[0].metadata["projection"] == "pca"
    assert all(k_in * k_out <= 64 for k_in, k_out in projected[0].metadata["layer_dims"].values())
    overlap = [len({p.index for p in a.proponents} & {p.index for p in b.proponents}) / 5
               for a, b in zip(exact, projected)]
    assert sum(overlap) / len(overlap) >= 0.8, overlap


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(train_labels=LABELS[:-1]), ValueError, "train_labels has 23 labels but train_texts has 24"),
        (dict(k=25), ValueError, "k=25 is larger than the training set"),
        (dict(layers=["bert.encoder.layer.9.output.dense"]), ValueError, "no module named"),
        (dict(layers=["bert.encoder.layer.1.output.LayerNorm"]), ValueError, "nn.Linear layers only"),
        (dict(train_labels=[5] * 24), ValueError, r"train_labels\[0\] must be a class index"),
        (dict(train_texts="one text"), TypeError, "train_texts must be a list"),
    ],
)
def test_bad_input(classifier, kwargs, error, match):
    model, _ = classifier
    args = dict(train_texts=TRAIN, train_labels=LABELS, test_texts=TEST, k=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        Explainer(model, bert_tokenizer()).influence(**args)


def test_checkpoint_not_matching_the_model(classifier, tmp_path):
    model, _ = classifier
    other = tiny_bert(num_labels=3).double()
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="does not match the model: 'classifier.weight' has shape"):
        Explainer(model, bert_tokenizer()).influence(TRAIN, LABELS, TEST, k=3, checkpoints=[str(path)])


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_bert(num_labels=2)
    model.save_pretrained(root / "model")
    bert_tokenizer().save_pretrained(root / "model")
    train = [{"text": f"{TRAIN[i % 24]} number {i}", "label": LABELS[i % 24]} for i in range(300)]
    _write_jsonl(root / "train.jsonl", train)
    _write_jsonl(root / "test.jsonl", [{"text": t} for t in TEST])
    return root


def _cli(root: pathlib.Path, output: pathlib.Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "saliency_fast", "influence", "--train", str(root / "train.jsonl"), "--test",
            str(root / "test.jsonl"), "--output", str(output), "--model", str(root / "model"), "--k", "3",
            "--shard-size", "10", "--batch-size", "10", "--no-progress", "--device", "cpu", *extra]


def _shards(output: pathlib.Path) -> dict[str, torch.Tensor]:
    return {str(p.relative_to(output)): load_file(str(p))["vectors"] for p in sorted(output.glob("index/checkpoint-*/part-*"))}


def test_cli_sigkill_resume_and_html(cli_inputs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(pathlib.Path(__file__).resolve().parent.parent)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(cli_inputs, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(killed.glob("index/checkpoint-0/part-00002.safetensors")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _shards(killed)
    assert 3 <= len(partial) < 30, "the job must be killed midway"
    assert not (killed / "influence.json").exists()
    subprocess.run(_cli(cli_inputs, killed), env=env, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(_cli(cli_inputs, straight), env=env, check=True, capture_output=True)
    resumed, expected = _shards(killed), _shards(straight)
    assert sorted(resumed) == sorted(expected) and len(expected) == 30
    for name, vectors in expected.items():
        assert vectors.shape[0] == 10 and torch.equal(resumed[name], vectors), name
    for name, vectors in partial.items():
        assert torch.equal(resumed[name], vectors), f"{name} was rewritten"
    assert not list(killed.rglob(".*.tmp"))
    found, plain = (json.loads((d / "influence.json").read_text()) for d in (killed, straight))
    assert [r.pop("metadata")["output"] for r in found] == [str(killed)] * len(TEST)
    assert found == [{k: v for k, v in r.items() if k != "metadata"} for r in plain]
    page = (killed / "influence.html").read_text()
    assert "bad and long &lt;b&gt;&amp;amp;" in page and "<b>&amp;" not in page
    assert "Proponents" in page and "Opponents" in page


def test_cli_bad_input(cli_inputs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, [{"text": "x"}])
    args = _cli(cli_inputs, tmp_path / "out")
    args[args.index("--train") + 1] = str(bad)
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2 and "has no 'label' field" in proc.stderr and "Traceback" not in proc.stderr
