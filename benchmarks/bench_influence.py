"""TracIn influence against captum 0.9.0, in one process, on the same model, data and checkpoints.

Model: all-MiniLM-L6-v2 (the embedded copy) with a sequence-classification head
(``BertForSequenceClassification``: its pooler, then a linear head); the head is trained for
three epochs of SGD on generated sentiment texts (on the frozen encoder's pooled features) and
saved after each epoch: 3 checkpoints, each with its learning rate. Layers: the last encoder
block's six Linear layers and the head.

Contenders, each given one untimed warm-up on a small slice and then one timed run, in turn:

- captum ``TracInCP`` (per-example loss, its example-by-example gradients): the exact scores
  ``[n_test, n_train]``;
- our ``TracInCP`` (per-example Linear gradients from one batched backward and the native op),
  exact: its scores must equal captum's (max relative difference printed);
- our projected index (``projection_dim`` per layer, Kronecker-factored): the training gradients
  written as a job, then FAISS top-10 proponents per test text; the top-10 overlap with captum's
  exact top-10 is printed, and the share of the time spent building and querying the index.

All float32 on the CPU (``--threads``, default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import shutil
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POSITIVE = "good great wonderful excellent lovely delightful superb brilliant enjoyable charming".split()
NEGATIVE = "bad awful terrible boring dull dreadful poor horrible disappointing weak".split()
SUBJECTS = "the movie|this film|the plot|the acting|the ending|the soundtrack|the cast|the story|the script".split("|")
TEMPLATES = ["{s} was {a}.", "i thought {s} was {a}", "{s} is {a} and {b}", "honestly, {s} felt {a}",
             "what a {a} experience, {s} too", "{s} was {a}, but the rest was {b}"]


def sentiment_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        words = POSITIVE if label else NEGATIVE
        other = NEGATIVE if label else POSITIVE
        template = rng.choice(TEMPLATES)
        # the "but" template mixes in the opposite word: noisy examples for TracIn to find
        b = rng.choice(other if "but" in template else words)
        texts.append(template.format(s=rng.choice(SUBJECTS), a=rng.choice(words), b=b))
        labels.append(label)
    return texts, labels


class Logits(nn.Module):
    """``forward(input_ids, attention_mask) -> logits``: the form both libraries take."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def build(n_train: int, n_test: int, workdir: pathlib.Path, batch: int):
    import transformers
    from safetensors.torch import save_file

    from saliency_fast.hf import default_model_path

    path = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(str(path), num_labels=2,
                                                                       local_files_only=True).eval()
    train_texts, train_labels = sentiment_texts(n_train, 1)
    test_texts, test_labels = sentiment_texts(n_test, 2)
    enc = tok(train_texts + test_texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():  # the encoder is frozen: its pooled features once, then the head trains
        pooled = torch.cat([model.bert(input_ids=ids[i:i + 256], attention_mask=mask[i:i + 256]).pooler_output
                            for i in range(0, n_train, 256)])
    y = torch.tensor(train_labels)
    checkpoints, lrs = [], (0.5, 0.3, 0.1)
    head = model.classifier
    for epoch, lr in enumerate(lrs):
        opt = torch.optim.SGD(head.parameters(), lr=lr)
        order = torch.randperm(n_train)
        for i in range(0, n_train, 32):
            rows = order[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(head(pooled[rows]), y[rows]).backward()
            opt.step()
        file = workdir / f"checkpoint-{epoch}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
        checkpoints.append((str(file), lr))
    train = TensorDataset(ids[:n_train], mask[:n_train], y)
    test = (ids[n_train:], mask[n_train:], torch.tensor(test_labels))
    return Logits(model), train, test, checkpoints, train_texts


def top_overlap(exact_scores: torch.Tensor, found: torch.Tensor) -> float:
    """Mean share of each test example's exact top-k (k = found's width) among the found ones."""
    exact_top = exact_scores.topk(found.shape[1], dim=1).indices
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact_top, found)) / exact_top.numel()


def save_peer(stem: str, sizes: str, timing, scores: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file({"scores": scores.contiguous()}, f"{stem}.safetensors")
    pathlib.Path(f"{stem}.json").write_text(json.dumps({"sizes": sizes, "times": timing.times,
                                                        "cpu_times": timing.cpu_times, "warmup": timing.warmup,
                                                        "threads": torch.get_num_threads()}))
    print(f"captum: {timing.median:.1f} s; saved to {stem}.json / .safetensors")


def load_peer(stem: str, sizes: str):
    """captum's Timing and scores from a --peer-only run (safetensors and JSON: nothing unpickled)."""
    from safetensors.torch import load_file

    from benchmarks._timing import Timing

    saved = json.loads(pathlib.Path(f"{stem}.json").read_text())
    if saved["sizes"] != sizes:
        raise ValueError(f"--peer-from {stem}: saved for {saved['sizes']!r}, this run is {sizes!r}")
    timing = Timing(tuple(saved["times"]), tuple(saved["cpu_times"]), saved["warmup"])
    return timing, load_file(f"{stem}.safetensors")["scores"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # captum's exact side costs about 0.6 s per training text here (3 checkpoints): 400 keeps the whole
    # run under 10 minutes; the 5,000 / 100 of the issue is ours-only territory (--skip-captum)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="16 training and 2 test texts (proves it runs)")
    parser.add_argument("--projection-dim", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-captum", action="store_true", help="ours only (no peer, no checks)")
    parser.add_argument("--device", default="cpu", help="torch device of the model and data (default cpu)")
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    parser.add_argument("--peer-only", metavar="STEM",
                        help="run captum only (its warm-up, then one timed run) and save its time to STEM.json and "
                             "its scores to STEM.safetensors: the full size's captum run takes most of an hour, so it "
                             "can run apart (in the background) and be read back with --peer-from")
    parser.add_argument("--peer-from", metavar="STEM",
                        help="captum's time and scores from a --peer-only run of the same sizes instead of running it")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test = 16, 2
    torch.set_num_threads(args.threads)
    from captum.influence import TracInCP as CaptumTracInCP
    from safetensors.torch import load_file

    from benchmarks._results import row, write_rows
    from benchmarks._timing import interleaved
    from saliency_fast import TracInCP
    from saliency_fast.influence import index as index_lib

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-influence-"))
    started = time.perf_counter()
    model, train, test, checkpoints, _ = build(args.train, args.test, workdir, args.batch_size)
    model.to(args.device)
    train = TensorDataset(*(t.to(args.device) for t in train.tensors))
    test = tuple(t.to(args.device) for t in test)
    print(f"model + 3 checkpoints ready in {time.perf_counter() - started:.1f} s "
          f"({args.train} train / {args.test} test texts, {train.tensors[0].shape[1]} tokens padded, "
          f"{args.threads} thread(s))")
    lr_of = dict(checkpoints)
    paths = [p for p, _ in checkpoints]
    layers = [f"model.bert.encoder.layer.5.{n}" for n in ("attention.self.query", "attention.self.key",
              "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense")]
    layers.append("model.classifier")

    def load(m, path):
        m.model.load_state_dict(load_file(path, device=str(args.device)))
        return lr_of[path]

    def captum_exact(data, query):
        tracin = CaptumTracInCP(model, data, paths, load, layers=layers, loss_fn=nn.CrossEntropyLoss(reduction="none"),
                                batch_size=args.batch_size)
        return tracin.influence(query)

    def ours_exact(data, query):
        tracin = TracInCP(model, data, paths, load, layers=layers, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                          batch_size=args.batch_size, sample_wise_grads_per_batch=True)
        return tracin.influence(query)

    index_seconds = {}

    def ours_projected(data, query, k=10):
        out = pathlib.Path(tempfile.mkdtemp(dir=workdir))
        ids, mask, y = data.tensors
        loss = nn.CrossEntropyLoss(reduction="sum")

        def train_batch(a, b):
            return (ids[a:b], mask[a:b]), y[a:b]

        def test_batch(a, b):
            return (query[0][a:b], query[1][a:b]), query[2][a:b]

        index_lib.build_index(out, model, layers, checkpoints, lambda m, p: load(m, p), len(ids), train_batch, loss,
                              data_fingerprint="bench", projection_dim=args.projection_dim, batch_size=args.batch_size,
                              shard_size=1024, progress=False)
        queries = index_lib.query_vectors(model, out, lambda m, p: load(m, p), len(query[0]), test_batch, loss,
                                          args.batch_size)
        t = time.perf_counter()
        index = index_lib.open_index(out)
        found = index.search(queries, min(k, len(ids)))
        index_seconds["last"] = time.perf_counter() - t
        index_seconds["backend"] = index.backend
        return found

    small = TensorDataset(*(t[:64] for t in train.tensors))
    small_query = tuple(t[:4] for t in test)
    contenders = {"ours exact": ours_exact, "ours projected": ours_projected}
    if args.peer_only:
        contenders = {"captum exact": captum_exact}
    elif not (args.skip_captum or args.peer_from):
        contenders = {"captum exact": captum_exact, **contenders}
    for fn in contenders.values():  # a warm-up each on a small slice (the full runs take minutes)
        fn(small, small_query)
    outputs = {}

    def keep(name, fn):
        return lambda: outputs.__setitem__(name, fn(train, test))

    timings = interleaved({name: keep(name, fn) for name, fn in contenders.items()}, runs=1, warmup=0, progress=True)
    # each had its one warm-up above (on the small slice: a full-size warm-up would double the run)
    timings = {name: dataclasses.replace(t, warmup=1) for name, t in timings.items()}
    sizes = f"{args.train} train x {args.test} test, 3 checkpoints"
    if args.peer_only:
        save_peer(args.peer_only, sizes, timings["captum exact"], outputs["captum exact"])
        return
    if args.peer_from:
        timings["captum exact"], outputs["captum exact"] = load_peer(args.peer_from, sizes)
    ours = outputs["ours exact"]
    share = index_seconds["last"] / timings["ours projected"].median
    print(f"index build + query ({index_seconds['backend']}): {index_seconds['last']:.2f} s = {100 * share:.1f} % of "
          f"the projected run")
    rows = []
    if "captum exact" not in outputs:  # the overlap against our exact scores (equal to captum's where both ran)
        print(f"projected top-10 overlap with our exact top-10: {top_overlap(ours, outputs['ours projected'][0]):.3f}")
    else:
        peer = outputs["captum exact"]
        max_diff = float((ours - peer).abs().max() / peer.abs().max())
        accuracy = None
        if max_diff >= 1e-5:  # float32 rounding on one side or both: float64 (untimed) says whose
            model.double()
            truth = ours_exact(train, test).double()
            model.float()
            errors = [float((side.double() - truth).abs().max() / truth.abs().max()) for side in (ours, peer)]
            accuracy = f"vs float64: ours {errors[0]:.1e}, captum {errors[1]:.1e}"
            print(f"exact: max |ours - captum| / max |captum| = {max_diff:.2e}; {accuracy}")
            assert errors[0] < 1e-5, f"our exact scores differ from float64's: {errors[0]:.2e}"
        overlap = top_overlap(peer, outputs["ours projected"][0])
        print(f"exact: max |ours - captum| / max |captum| = {max_diff:.2e}; "
              f"projected top-10 overlap with the exact top-10: {overlap:.3f}")
        rows.append(row(f"TracInCP exact, MiniLM last block + head, {sizes}", "captum 0.9.0 TracInCP",
                        timings["captum exact"], timings["ours exact"], max_diff=max_diff, peer_dtype="float32",
                        ours_dtype="float32", floor_s=None, accuracy=accuracy, device=args.device))
        rows.append(row(f"TracIn projected {args.projection_dim}/layer + FAISS top-10, {sizes}",
                        "captum 0.9.0 TracInCP (exact)", timings["captum exact"], timings["ours projected"],
                        max_diff=None, peer_dtype="float32", ours_dtype="float32", floor_s=None, kind="less-work",
                        accuracy=f"top-10 overlap with the exact top-10 {overlap:.2f}; index build + query "
                        f"{100 * share:.1f} % of the run ({index_seconds['backend']})", device=args.device))
        for found in rows:
            print(f"{found['workload']:80} {found['ratio']:6.2f}x")
    write_rows(args.json, rows)
    shutil.rmtree(workdir, ignore_errors=True)  # three MiniLM checkpoints and the indexes


if __name__ == "__main__":
    main()
