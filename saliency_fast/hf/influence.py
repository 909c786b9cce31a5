"""Training-data influence for Hugging Face classifiers: for each test text, the training texts
that most raised (proponents) and lowered (opponents) its predicted class's probability,
by TracIn over the chosen Linear layers, projected per example and searched with FAISS.

The loss is cross-entropy: the training label for training texts, the predicted class for test
texts (so a proponent is a training example whose gradient step made this prediction likelier).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import pathlib
import tempfile

import torch
from torch import nn

from saliency_fast.influence import checkpoints as ckpt_lib
from saliency_fast.influence import index as index_lib
from saliency_fast.influence import search


def last_block_linear_layers(model: nn.Module) -> list[str]:
    """Default layers: the Linear layers of the last numbered block (``...layer.5.``) and those
    outside the base model (the head, e.g. ``classifier``)."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    blocks = {_block_prefix(name) for name in linear} - {None}
    if not blocks:
        return linear
    last = max(blocks, key=lambda b: int(b.rsplit(".", 1)[1]))
    trunk = last.split(".")[0] + "."
    return [n for n in linear if n.startswith(last + ".")] + [n for n in linear if not n.startswith(trunk)]


def _block_prefix(name: str) -> str | None:
    """``a.b.5`` for ``a.b.5.c.d``: the name up to its first numeric part (None: no such part)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


@dataclasses.dataclass
class Influential:
    index: int
    text: str
    label: int
    score: float


@dataclasses.dataclass
class InfluenceResult:
    """One test text's proponents and opponents, most influential first."""

    text: str
    predicted: int
    proponents: list[Influential]
    opponents: list[Influential]
    metadata: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} must not be empty")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{name}[{bad}] must be a str, got {type(texts[bad]).__name__}")
    return list(texts)


def _check_labels(train_labels, n_train: int, n_classes: int) -> list[int]:
    if isinstance(train_labels, torch.Tensor):
        train_labels = train_labels.tolist()
    if not isinstance(train_labels, (list, tuple)):
        raise TypeError(f"train_labels must be a list of class indices, got {type(train_labels).__name__}")
    if len(train_labels) != n_train:
        raise ValueError(f"train_labels has {len(train_labels)} labels but train_texts has {n_train} texts; "
                         "expected one label per training text")
    for i, label in enumerate(train_labels):
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < n_classes:
            raise ValueError(f"train_labels[{i}] must be a class index in [0, {n_classes}), got {label!r}")
    return [int(x) for x in train_labels]


def _fingerprint(texts: list[str], labels: list[int]) -> str:
    digest = hashlib.sha256()
    for text, label in zip(texts, labels):
        digest.update(json.dumps([text, label]).encode())
    return digest.hexdigest()


def _resolve_checkpoints(model: nn.Module, checkpoints, workdir: pathlib.Path) -> list[tuple[str, float]]:
    """``(path, learning rate)`` pairs. None: the model's current weights (saved once, named by
    their digest), learning rate 1. A path, or a list of paths and/or ``(path, lr)`` pairs,
    each checked against the model now (a clear error before any work)."""
    if checkpoints is None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        digest = hashlib.sha256()
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].float().numpy().tobytes())
        path = workdir / f"weights-{digest.hexdigest()[:16]}.safetensors"
        if not path.exists():
            workdir.mkdir(parents=True, exist_ok=True)
            save_file(state, str(path))
        return [(str(path), 1.0)]
    items = [checkpoints] if isinstance(checkpoints, (str, pathlib.Path)) else list(checkpoints)
    if not items:
        raise ValueError("checkpoints must name at least one checkpoint")
    pairs = []
    for item in items:
        path, lr = (item, None) if isinstance(item, (str, pathlib.Path)) else item
        state = ckpt_lib.load_state_dict(path)
        saved_lr = state.pop("learning_rate", 1.0)
        ckpt_lib.check_matches(model, state, path)
        pairs.append((str(pathlib.Path(path).resolve()), float(saved_lr if lr is None else lr)))
    return pairs


def _load_into(model: nn.Module, path: str) -> None:
    state = ckpt_lib.load_state_dict(path)
    state.pop("learning_rate", None)
    ckpt_lib.check_matches(model, state, path)
    model.load_state_dict(state)


class _Batches:
    """Tokenized texts and their targets, served by row range."""

    def __init__(self, explainer, texts: list[str], labels: list[int]):
        self.explainer, self.texts, self.labels = explainer, texts, labels

    def __call__(self, start: int, stop: int):
        explainer = self.explainer
        enc = explainer.tokenizer(self.texts[start:stop], padding=True, truncation=True, return_tensors="pt")
        enc = {k: v.to(explainer.device) for k, v in enc.items() if explainer.accepts(k)}
        targets = torch.tensor(self.labels[start:stop], device=explainer.device)
        return (_LogitsOf(explainer.model, enc),), targets


class _LogitsOf:
    """The model's call on one tokenized batch, passed as the single 'input' of the forward."""

    def __init__(self, model, encoded):
        self.model, self.encoded = model, encoded


class _Forward(nn.Module):
    """``forward(batch) -> logits`` around a Hugging Face classifier (its modules are shared,
    so layer names are the model's)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: _LogitsOf) -> torch.Tensor:
        out = self.model(**batch.encoded)
        return out.logits if hasattr(out, "logits") else out[0]


def influence(
    explainer,
    train_texts,
    train_labels,
    test_texts,
    k: int = 10,
    layers: list[str] | None = None,
    projection_dim: int | None = 256,
    checkpoints=None,
    output=None,
    backend: str | None = None,
    batch_size: int | None = None,
    shard_size: int = 1024,
    seed: int = 0,
    progress: bool = True,
    projection: str = "pca",
) -> list[InfluenceResult]:
    """See :meth:`saliency_fast.Explainer.influence`."""
    model = explainer.model
    if explainer.task != "classify":
        raise ValueError(f"influence needs a sequence classifier (task 'classify'), this explainer's task is "
                         f"{explainer.task!r}")
    train_texts = _check_texts("train_texts", train_texts)
    test_texts = _check_texts("test_texts", test_texts)
    n_classes = int(model.config.num_labels)
    train_labels = _check_labels(train_labels, len(train_texts), n_classes)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > len(train_texts):
        raise ValueError(f"k={k} is larger than the training set ({len(train_texts)} texts)")
    layers = last_block_linear_layers(model) if layers is None else list(layers)
    if isinstance(layers, str):
        raise TypeError("layers must be a list of module names")
    forward = _Forward(model)
    prefixed = [f"model.{name}" for name in layers]
    from saliency_fast.influence.projected import check_linear_layers

    try:
        check_linear_layers(forward, prefixed)
    except ValueError as exc:
        raise ValueError(str(exc).replace("'model.", "'")) from None
    batch_size = batch_size or explainer.batch_size
    temporary = tempfile.TemporaryDirectory(prefix="saliency-fast-influence-") if output is None else None
    root = pathlib.Path(temporary.name if temporary else output)
    original = {k2: v.detach().clone() for k2, v in model.state_dict().items()}
    try:
        pairs = _resolve_checkpoints(model, checkpoints, root / "weights")
        loss = nn.CrossEntropyLoss(reduction="sum")
        predicted = _predict(explainer, test_texts, batch_size)
        built = index_lib.build_index(
            root / "index", forward, prefixed, pairs, _load_into_forward, len(train_texts),
            _Batches(explainer, train_texts, train_labels), loss, data_fingerprint=_fingerprint(train_texts, train_labels),
            projection_dim=projection_dim, projection=projection, seed=seed, shard_size=shard_size,
            batch_size=batch_size, progress=progress,
        )
        queries = index_lib.query_vectors(forward, root / "index", _load_into_forward, len(test_texts),
                                          _Batches(explainer, test_texts, predicted), loss, batch_size)
        index = index_lib.open_index(root / "index", backend=backend)
        top_idx, top_scores = index.search(queries, k, largest=True)
        low_idx, low_scores = index.search(queries, k, largest=False)
    finally:
        model.load_state_dict(original)
        if temporary is not None:
            temporary.cleanup()
    info = {
        "method": "tracin", "layers": layers, "projection_dim": projection_dim,
        "projection": built["job"]["projection"], "fit_rows": built["job"]["fit_rows"], "seed": built["job"]["seed"],
        "layer_dims": {name.removeprefix("model."): dims for name, dims in built["layer_dims"].items()},
        "projection_rule": built["projection_rule"],
        "checkpoints": [{"path": p, "learning_rate": lr} for p, lr in pairs] if checkpoints is not None else "current weights",
        "index": index.backend, "index_dim": index.dim, "train_size": len(train_texts), "model": explainer.model_name,
        "output": None if temporary else str(root),
    }

    def rows(indices, scores):
        return [Influential(int(i), train_texts[int(i)], train_labels[int(i)], float(s)) for i, s in zip(indices, scores)]

    return [
        InfluenceResult(text, predicted[q], rows(top_idx[q], top_scores[q]), rows(low_idx[q], low_scores[q]), dict(info))
        for q, text in enumerate(test_texts)
    ]


def _load_into_forward(forward: _Forward, path: str) -> None:
    _load_into(forward.model, path)


def _predict(explainer, texts: list[str], batch_size: int) -> list[int]:
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            (batch,), _ = _Batches(explainer, texts, [0] * len(texts))(start, min(len(texts), start + batch_size))
            out += _Forward(explainer.model)(batch).argmax(-1).tolist()
    return out


def default_backend() -> str:
    return search.default_backend()
