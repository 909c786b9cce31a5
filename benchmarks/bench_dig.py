"""Discretized Integrated Gradients: inseq 0.7.1 vs saliency_fast, in one process, same inputs.

Model and vocabulary (both contenders use exactly these): a GPT-2 with GPT-2-small's depth
(12 layers; ``--layers``), width 384 with 6 heads of 64, whose word embeddings (tied LM head) are
the real all-MiniLM-L6-v2 WordPiece vocabulary, 30522 x 384; every other weight is random (seed 0).
The width is MiniLM's, not GPT-2-small's 768, so that DIG walks through real word embeddings: the
neighbour geometry is what the path search works on. Inputs: 4 sentences cut to 32 word pieces;
target: the model's own next-token prediction (the logit at the last position); baseline word:
[PAD]. DIG with the same strategy, neighbours and steps for both; inseq counts ``n_steps`` as
path points, so ours runs with ``convention="inseq"`` and the paths are identical.

Rows:

- first call: everything from nothing, neighbour search included (ours in float32, then again
  with ``dtype=torch.bfloat16``, whose max difference from inseq's float32 result is printed). inseq builds its
  scikit-learn graph over the whole vocabulary (its pickle cache turned off) and attributes one
  sentence per call (with several per call it mixes examples up, see saliency_fast.methods.dig);
  ours attributes the 4 sentences in one call, searching neighbours on demand. Outputs compared.
  ``floor`` is the model's forward + backward over the same path points, which both must pay.
- path building alone, neighbour lists ready: inseq's path builder vs ours; paths compared. The
  official algorithm's loop (our plain re-implementation, ``dig_paths.build_paths_reference``) is
  timed and printed, not a row: it is our code, not a peer.
- neighbour search (a design comparison, not a speed claim: different work): inseq's graph of the
  whole vocabulary vs our search for the words DIG visited (torch and FAISS CPU).

Each first call runs once, cold (caches cleared), for every contender alike: a second call would
no longer be a first call.

The DIG completeness error on the real all-MiniLM-L6-v2 (sentence similarity) is printed after.

    python benchmarks/bench_dig.py              # 12 layers, 4 x 32 tokens, 50 neighbours
    python benchmarks/bench_dig.py --neighbors 500
    python benchmarks/bench_dig.py --quick      # 2 layers, 2 x 16 tokens, a 6000-word vocabulary
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import tempfile
import warnings

import torch
import transformers
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import Timing, interleaved  # noqa: E402
from saliency_fast import DiscretizedIntegratedGradients, dig_paths, knn  # noqa: E402
from saliency_fast.methods import _common  # noqa: E402
from tests.tiny_models import bert_tokenizer, minilm_path, minilm_word_embeddings  # noqa: E402

SENTENCES = [
    "the film opens with a long shot of an empty harbour at dawn, and for the next two hours it never once "
    "lets the audience forget how cold the water is",
    "i bought this blender because the reviews promised it could crush ice in seconds, but after a week the "
    "motor started to smell like burning plastic and the lid would no longer close",
    "researchers at the university measured how quickly the glaciers retreated over three decades and found "
    "that the pace has nearly doubled since the early nineties, faster than any model had predicted",
    "our team lost the final match on penalties after leading for most of the game, which made the long bus "
    "ride home through the snow and the dark feel even longer than usual",
]


class LastTokenLogits(nn.Module):
    """Word embeddings -> next-token logits at the last position (the LM head on that row only)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds):
        hidden = self.model.transformer(inputs_embeds=embeds).last_hidden_state[:, -1]
        return self.model.lm_head(hidden)


def build(layers: int, vocab_size: int, device: str = "cpu"):
    embedding = minilm_word_embeddings()[:vocab_size]
    torch.manual_seed(0)
    tok = bert_tokenizer()
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=embedding.shape[1], n_layer=layers,
                                     n_head=6, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.copy_(embedding)  # tied with the LM head
    model.to(device)
    return LastTokenLogits(model).eval(), model.transformer.wte.weight


def token_ids(count: int, tokens: int, vocab_size: int) -> torch.Tensor:
    tok = bert_tokenizer()
    if vocab_size == tok.vocab_size:
        rows = [tok(s, add_special_tokens=False)["input_ids"][:tokens] for s in SENTENCES[:count]]
        return torch.tensor(rows)
    generator = torch.Generator().manual_seed(0)  # --quick: words of the shortened vocabulary
    return torch.randint(1000, vocab_size, (count, tokens), generator=generator)


def timed(fn, device: str = "cpu") -> tuple[object, Timing]:
    """fn's value and the Timing of its one cold call (no warm-up: the first call is the workload)."""
    value = {}
    timing = interleaved({"call": lambda: value.update(result=fn())}, runs=1, warmup=0, device=device)["call"]
    return value["result"], timing


def max_rel_diff(ours: torch.Tensor, peer: torch.Tensor) -> float:
    return ((ours - peer).abs().max() / peer.abs().max()).item()


def inseq_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from inseq.attr.feat.ops.discretized_integrated_gradients import DiscretetizedIntegratedGradients
    return DiscretetizedIntegratedGradients


def inseq_first_call(forward, embedding, ids, base, targets, args):
    """inseq's DIG from nothing: its neighbour graph (pickle cache off), then one call per sentence."""
    peer = inseq_classes()(forward)
    with tempfile.TemporaryDirectory() as tmp:
        _, graph_time = timed(lambda: peer.load_monotonic_path_builder(  # scikit-learn: host memory
            "bench-dig", vocabulary_embeddings=embedding.detach().cpu(), special_tokens=[],
            cache_dir=pathlib.Path(tmp), n_neighbors=args.neighbors, save_cache=False, overwrite_cache=True),
            args.device)
    rows = [peer.attribute(ids[i : i + 1], baselines=base[i : i + 1], target=targets[i], n_steps=args.steps,
                           method=args.strategy) for i in range(ids.shape[0])]
    return peer, torch.cat(rows).detach(), graph_time


def ours_first_call(forward, embedding, ids, targets, args, pad_id, dtype=None):
    knn.clear_cache()
    dig = DiscretizedIntegratedGradients(forward, embedding, strategy=args.strategy, n_neighbors=args.neighbors,
                                         n_steps=args.steps, baseline_token_id=pad_id, convention="inseq",
                                         dtype=dtype)
    return dig.attribute(ids, target=targets)


def gradient_floor(forward, paths, targets, device: str) -> float:
    """Forward + backward of the model over the path points DIG needs (all but the input)."""
    points = paths[:-1].reshape(-1, *paths.shape[2:])
    target = _common.Target.parse(targets, paths.shape[1])
    with _common.frozen_parameters(forward):
        return timed(lambda: _common.input_gradients(forward, (points,), target, None), device)[1].median


def path_rows(peer, embedding, ids, base, args, index):
    n_anchors, steps = dig_paths.step_plan(args.steps, "inseq")
    plan = dict(n_anchors=n_anchors, monotonize_steps=steps, strategy=args.strategy)
    ours, ours_time = timed(lambda: dig_paths.build_paths(ids, base, embedding, index, **plan), args.device)

    @functools.cache
    def neighbors(word):  # the same lists, ready, for the plain loop
        return index.neighbors(torch.tensor([word]))[0].tolist()

    for word in ids.unique().tolist() + index._known.nonzero().squeeze(1).tolist():
        neighbors(word)
    plain, plain_time = timed(lambda: dig_paths.build_paths_reference(ids, base, embedding.detach(), neighbors,
                                                                      **plan), args.device)
    print(f"path building, our plain loop of the official algorithm (not a peer): {plain_time.median:.2f} s, "
          f"max diff from ours {max_rel_diff(ours, plain):.1e}")
    theirs, theirs_time = timed(lambda: torch.stack([
        peer.path_builder.scale_inputs(ids[i : i + 1], base[i : i + 1], n_steps=args.steps,
                                       scale_strategy=args.strategy).detach()
        for i in range(ids.shape[0])], dim=1), args.device)
    return ours, [("DIG path building, neighbour lists ready", "inseq 0.7.1 path builder", theirs_time, ours_time,
                   max_rel_diff(ours, theirs), "float32", "equal-work", None)]


def search_rows(embedding, visited, args, graph_time):
    rows = []
    for backend in ("torch", "faiss-cpu"):
        index = knn.NeighborIndex(embedding, args.neighbors, backend)
        _, seconds = timed(lambda: index.neighbors(visited), args.device)
        rows.append((f"DIG neighbour search ({visited.numel()} visited words, {backend})",
                     "inseq 0.7.1 (scikit-learn graph of the vocabulary)", graph_time, seconds, None, "float32",
                     "design", f"different work: ours searches the {visited.numel()} words DIG visits, inseq "
                               f"builds a graph of all {embedding.shape[0]} words"))
    return rows


def completeness(strategy: str, n_steps: int, neighbors: int) -> list[float]:
    """|sum(attributions) - (F(x) - F(baseline))| / |F(x) - F(baseline)| of DIG on the real
    all-MiniLM-L6-v2: cosine similarity of each sentence with a fixed one, over the first's words."""
    tok = bert_tokenizer()
    model = transformers.AutoModel.from_pretrained(str(minilm_path())).eval()

    def pooled(out, mask):
        return (out.last_hidden_state * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)

    other = tok(["a short story about the sea"], return_tensors="pt")
    with torch.no_grad():
        anchor = pooled(model(**other), other["attention_mask"])

    def similarity(embeds, mask):
        return nn.functional.cosine_similarity(pooled(model(inputs_embeds=embeds, attention_mask=mask), mask), anchor)

    enc = tok([s[:80] for s in SENTENCES], return_tensors="pt", padding=True)
    dig = DiscretizedIntegratedGradients(similarity, model.get_input_embeddings().weight, strategy=strategy,
                                         n_neighbors=neighbors, n_steps=n_steps, baseline_token_id=tok.pad_token_id,
                                         special_token_ids=tok.all_special_ids)
    attributions, delta = dig.attribute(enc["input_ids"], additional_forward_args=(enc["attention_mask"],),
                                        return_convergence_delta=True)
    change = attributions.flatten(1).sum(1) - delta
    return (delta.abs() / change.abs()).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, 2 x 16 tokens, a 6000-word vocabulary")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--neighbors", type=int, default=50, help="k of the neighbour lists (inseq's default 50)")
    parser.add_argument("--steps", type=int, default=32, help="path points, inseq's n_steps (30 anchors)")
    parser.add_argument("--strategy", choices=["greedy", "maxcount"], default="greedy")
    parser.add_argument("--no-completeness", action="store_true", help="skip the real-MiniLM completeness check")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for everyone (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model and inputs live")
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sentences, tokens, vocab_size = (4, 32, 30522) if not args.quick else (2, 16, 6000)
    if args.quick:
        args.layers, args.steps = 2, 12

    forward, embedding = build(args.layers, vocab_size, args.device)
    ids = token_ids(sentences, tokens, vocab_size).to(args.device)
    pad_id = bert_tokenizer().pad_token_id
    base = torch.full_like(ids, pad_id)
    with torch.no_grad():
        targets = forward(embedding[ids]).argmax(-1).tolist()
    print(f"GPT-2 {args.layers} layers x 384 on the MiniLM vocabulary ({vocab_size} words), {sentences} x {tokens} "
          f"tokens, {args.strategy}, {args.neighbors} neighbours, {args.steps} points; torch threads "
          f"{torch.get_num_threads()}, device {args.device}")

    (peer, theirs, graph_time), peer_time = timed(lambda: inseq_first_call(forward, embedding, ids, base, targets,
                                                                          args), args.device)
    ours, ours_time = timed(lambda: ours_first_call(forward, embedding, ids, targets, args, pad_id), args.device)
    ours_bf16, ours_bf16_time = timed(lambda: ours_first_call(forward, embedding, ids, targets, args, pad_id,
                                                              torch.bfloat16), args.device)
    peer_s, ours_s = peer_time.median, ours_time.median
    index = knn.neighbor_index(embedding.detach(), args.neighbors)
    visited = index._known.nonzero().squeeze(1)
    paths, path_rows_found = path_rows(peer, embedding, ids, base, args, index)
    floor_s = gradient_floor(forward, paths, targets, args.device)
    bf16_diff = max_rel_diff(ours_bf16, theirs)
    rows = [("DIG first call (search + paths + gradients)", "inseq 0.7.1", peer_time, ours_time,
             max_rel_diff(ours, theirs), "float32", "equal-work", None),
            ("DIG first call, ours with dtype=bfloat16 (autocast)", "inseq 0.7.1 (float32)", peer_time,
             ours_bf16_time, bf16_diff, "bfloat16", "less-work",
             f"ours bf16 vs inseq fp32: max rel. diff {bf16_diff:.1e}; inseq in bf16 not measured")]
    rows += path_rows_found + search_rows(embedding.detach(), visited, args, graph_time)

    print(f"{'workload':58} {'peer':50} {'peer s':>8} {'ours s':>8} {'ratio':>8} {'max diff':>9}")
    for workload, peer_name, p, o, diff, *_ in rows:
        shown = "" if diff is None else f"{diff:9.1e}"
        print(f"{workload:58} {peer_name:50} {p.median:8.2f} {o.median:8.3f} {p.median / o.median:7.1f}x {shown}")
    print(f"gradient floor (model forward + backward over the {paths.shape[0] - 1} x {sentences} path points): "
          f"{floor_s:.2f} s; first call without it: inseq {peer_s - floor_s:.1f} s, ours {ours_s - floor_s:.2f} s "
          f"({(peer_s - floor_s) / max(ours_s - floor_s, 1e-9):.0f}x)")

    if not (args.quick or args.no_completeness):
        for strategy in ("greedy", "maxcount"):
            errors = completeness(strategy, 30, args.neighbors)
            print(f"completeness error of DIG ({strategy}, 30 anchors) on all-MiniLM-L6-v2 similarity, per sentence: "
                  + ", ".join(f"{100 * e:.0f} %" for e in errors))

    found = []
    for w, p, peer_t, ours_t, d, ours_dtype, kind, note in rows:
        found.append(row(f"{w} [{sentences}x{tokens}, {args.layers}L, k={args.neighbors}, {args.strategy}]", p,
                         peer_t, ours_t, max_diff=d, peer_dtype="float32", ours_dtype=ours_dtype,
                         floor_s=floor_s if w.startswith("DIG first call") else None, kind=kind,
                         accuracy=note if kind == "less-work" else None, device=args.device))
        if kind == "design":
            found[-1]["note"] = note
    write_rows(args.json, found)


if __name__ == "__main__":
    main()
