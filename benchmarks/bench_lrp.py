"""AttnLRP on generation: saliency_fast's single causal pass vs lxt's loop of one forward + backward per token.

Model: a Llama-architecture decoder at GPT-2-small scale (12 layers, hidden 768, 12 query / 4
key-value heads, SwiGLU MLP of 2,048, 32,000-token vocabulary), random init, float32, with a
word-level tokenizer. Case: a 16-token prompt and 16 forced tokens; the relevance of every
generated token over its prefix (the logit of the token, lxt's usual target).

Peer: lxt 2.1's rules in lxt's loop, as lxt's documentation runs generation attribution: for each
generated token one forward over its prefix (full logits) and one backward of its logit. lxt 2.1
itself does not import under transformers 5 (see ``tests/lxt_reference.py``), so the peer applies
lxt's rule functions as written out there (class-level patches, eager attention), and says so.

Ours: ``Explainer.attribute_generation(method="attnlrp")``: every target in the batched backward of
the single causal pass. Outputs are compared (max |ours - lxt| / max |lxt| over the
[generated, tokens] relevance matrix, summed over the embedding dim); runs are interleaved (peer
and us taking turns) and the median taken.

    python benchmarks/bench_lrp.py            # 16 + 16, 3 timed runs each
    python benchmarks/bench_lrp.py --quick    # 1 timed run each
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import interleaved, median_time  # noqa: E402
from bench_generation import rel_error  # noqa: E402


def build(seed: int = 0, layers: int = 12):
    import transformers
    from tiny_models import word_tokenizer

    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=layers, num_attention_heads=12,
        num_key_value_heads=4, max_position_embeddings=1024,
    )
    tok = word_tokenizer(config.vocab_size)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval(), tok


def texts(n_prompt: int, n_new: int, vocab_words: int, seed: int = 0) -> tuple[str, str]:
    """A prompt of random in-vocabulary words and the prompt + ``n_new`` more (no unknown tokens)."""
    gen = torch.Generator().manual_seed(seed)
    words = [f"w{int(i)}" for i in torch.randint(0, vocab_words, (n_prompt + n_new,), generator=gen)]
    return " ".join(words[:n_prompt]), " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="2 layers, 8 + 4 tokens, one timed run each (proves it runs and matches)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rule", default="attnlrp", choices=["attnlrp", "cp_lrp"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (both sides)")
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    layers, n_prompt, n_new = (2, 8, 4) if args.quick else (12, 16, 16)

    import saliency_fast
    from lxt_reference import generation_relevance

    model, tok = build(layers=layers)
    explainer = saliency_fast.Explainer(model, tok, device=args.device)
    prompt, full = texts(n_prompt, n_new, model.config.vocab_size - 100)
    ids = explainer.attribute_generation(prompt, generated_text=full, method="saliency", progress=False).token_ids
    prompt_tokens = len(ids) - n_new
    outputs = {}

    def run_lxt():
        outputs["lxt"] = generation_relevance(model, ids, prompt_tokens, "llama", args.rule)

    def run_ours():
        outputs["ours"] = explainer.attribute_generation(
            prompt, generated_text=full, method=args.rule, aggregate="sum", progress=False).scores

    timings = interleaved({"lxt": run_lxt, "ours": run_ours}, runs=repeats, warmup=1, device=args.device)
    floor = median_time(lambda: forward_backward(model, ids, args.device), runs=max(repeats, 3), warmup=1,
                        device=args.device)
    peer, ours = timings["lxt"], timings["ours"]
    error = rel_error(outputs["ours"], outputs["lxt"])
    print(f"threads={torch.get_num_threads()} model=Llama {layers}x768, 12q/4kv heads, SwiGLU 2048, vocab 32k, random "
          f"init; {n_prompt}+{n_new} tokens, rule={args.rule}, float32; peer: lxt 2.1's rules applied as written out "
          "in tests/lxt_reference.py (lxt 2.1 does not import under transformers 5)")
    print(f"lxt loop {peer.median:.2f} s (cpu {peer.cpu_median:.2f}), ours {ours.median:.2f} s "
          f"(cpu {ours.cpu_median:.2f}), ratio {peer.median / ours.median:.1f}x "
          f"(cpu {peer.cpu_median / ours.cpu_median:.1f}x), max rel diff {error:.2e}, floor {floor:.2f} s")
    model_name = f"Llama {layers}x768 (12q/4kv, SwiGLU 2048, 32k vocab)"
    rows = [row(f"generation {n_prompt}+{n_new} tokens, {args.rule}, {model_name}",
                "lxt 2.1 rules (as tests/lxt_reference.py), loop of forward + backward per token", peer, ours,
                max_diff=error, peer_dtype="float32", ours_dtype="float32", floor_s=floor, device=args.device)]
    write_rows(args.json, rows)

def forward_backward(model, ids: list[int], device: str) -> None:
    """The floor: one plain forward over the whole sequence and one backward (of the target tokens'
    logits summed) to the embeddings, no relevance rules."""
    tokens = torch.tensor([ids], device=device)
    embeds = model.get_input_embeddings()(tokens).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits[0, :-1]
    logits.gather(-1, tokens[0, 1:, None]).sum().backward()


if __name__ == "__main__":
    main()
