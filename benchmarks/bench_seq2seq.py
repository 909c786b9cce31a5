"""Encoder-decoder generation attribution: saliency_fast's single pass vs inseq's step loop.

Same process, same model object, same source and forced target text, target function ``prob``,
inseq with ``attribute_target=True`` (source and target-prefix attributions), our runs and inseq's
taking turns with equal warm-ups and runs (``benchmarks._timing.interleaved``). Outputs are compared
on both sides after the L2 norm over the embedding dim (inseq's default aggregation): max
``|ours - inseq|`` over max ``|inseq|``. IG uses inseq's baseline (``unk`` at every token but EOS and
the target's start token), 16 Gauss-Legendre steps on both sides.

Models (random init, word-level tokenizers with each family's special tokens, ``tests/tiny_models``):
a T5-small-scale config (6 + 6 layers, d_model 512, 8 heads, d_ff 2048, 32,128 tokens) and a
Marian-scale one (6 + 6 layers, d_model 512, 8 heads, ffn 2048, 58,101 tokens, ``scale_embedding``
off: with it on, inseq scales the decoder's embeddings that Marian's decoder scales again). The
floor is one forward and one backward of the same model on the same tokens.

    python benchmarks/bench_seq2seq.py [--quick] [--json PATH] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import interleaved, median_time  # noqa: E402

FAMILIES = {
    "T5-small": ("t5", dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8), 32128),
    "Marian": ("marian", dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                              decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                              max_position_embeddings=512), 58101),
}


def build(name: str, device: str):
    import transformers
    from tiny_models import seq2seq_tokenizer, tiny_seq2seq

    family, overrides, vocab = FAMILIES[name]
    model, _ = tiny_seq2seq(family, **overrides, vocab_size=vocab)
    tok = seq2seq_tokenizer(family, words=vocab)
    assert len(tok) == vocab and isinstance(model, transformers.PreTrainedModel)
    return model.to(device), tok


def texts(n_source: int, n_target: int, seed: int = 0) -> tuple[str, str]:
    gen = torch.Generator().manual_seed(seed)
    words = [f"w{int(i)}" for i in torch.randint(0, 30000, (n_source + n_target,), generator=gen)]
    return " ".join(words[:n_source]), " ".join(words[n_source:])


def inseq_baseline(explainer, source: str, target: str) -> torch.Tensor:
    """inseq's IG baseline embeddings: unk everywhere but EOS and the target's start token."""
    from saliency_fast.hf import seq2seq

    pair = seq2seq.sequence_ids(explainer.model, explainer.tokenizer, source, None, target)
    ids = torch.tensor(pair.ids, device=explainer.device)
    tok = explainer.tokenizer
    baseline = torch.where(ids == tok.eos_token_id, ids, torch.full_like(ids, tok.unk_token_id))
    baseline[len(pair.source)] = ids[len(pair.source)]
    return seq2seq.SequenceEmbedding(explainer.model, len(pair.source))(baseline).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T5-small only, saliency only, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    import inseq

    from saliency_fast import Explainer

    runs = 1 if args.quick else args.runs
    source, target = texts(16, 16)
    rows = []
    for name in (["T5-small"] if args.quick else list(FAMILIES)):
        model, tok = build(name, args.device)
        explainer = Explainer(model, tok, exclude_special_tokens=False)  # inseq scores special tokens too
        for method in (["saliency"] if args.quick else ["saliency", "integrated_gradients"]):
            options = {"n_steps": 16} if method == "integrated_gradients" else {}
            peer = inseq.load_model(model, method, tokenizer=tok)
            ours_kwargs = dict(options, target="prob", aggregate="l2", progress=False)
            if method == "integrated_gradients":
                ours_kwargs["baseline"] = inseq_baseline(explainer, source, target)

            def run_peer():
                out = peer.attribute(source, target, attribute_target=True, show_progress=False, **options)
                seq = out.sequence_attributions[0]
                return torch.cat([seq.source_attributions, seq.target_attributions], 0).norm(dim=-1).T.float()

            def run_ours():
                result = explainer.attribute_generation(source, generated_text=target, method=method, **ours_kwargs)
                return torch.cat([result.source_scores, result.scores], 1)

            expected, got = run_peer(), run_ours()
            seen = ~torch.isnan(expected)
            if not torch.equal(seen, ~torch.isnan(got)):
                raise AssertionError(f"{name} {method}: ours and inseq score different positions")
            max_diff = float((got[seen] - expected[seen]).abs().max() / expected[seen].abs().max())
            timings = interleaved({"inseq": run_peer, "ours": run_ours}, runs=runs, warmup=1, device=args.device)
            floor = median_time(lambda: _forward_backward(explainer, source, target), runs=runs, warmup=1,
                                device=args.device)
            label = "IG 16 steps" if method == "integrated_gradients" else "saliency"
            rows.append(row(
                f"encoder-decoder generation {name} 16+16 tokens, {label} float32", "inseq 0.7.1 float32",
                timings["inseq"], timings["ours"], max_diff=max_diff, peer_dtype="float32", ours_dtype="float32",
                floor_s=floor, device=args.device,
            ))
            print(f"{name:9s} {method:22s} inseq {timings['inseq'].median:7.2f} s  ours {timings['ours'].median:6.2f} s"
                  f"  ratio {timings['inseq'].median / timings['ours'].median:5.2f}x  max rel diff {max_diff:.1e}"
                  f"  floor {floor:.3f} s", flush=True)
    write_rows(args.json, rows)


def _forward_backward(explainer, source: str, target: str) -> None:
    """The floor: one forward of the model on the same tokens and one backward of the scores' sum."""
    tok, model = explainer.tokenizer, explainer.model
    src = torch.tensor([tok(source)["input_ids"]], device=explainer.device)
    tgt = torch.tensor([[model.config.decoder_start_token_id] + tok(text_target=target)["input_ids"]],
                       device=explainer.device)
    embeds = model.get_input_embeddings()(src).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, decoder_input_ids=tgt, use_cache=False).logits
    logits.float().softmax(-1).amax(-1).sum().backward()


if __name__ == "__main__":
    main()
