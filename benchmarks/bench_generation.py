"""Attribution of causal-LM generation: saliency_fast's single causal pass vs inseq's step loop.

Same process, same model object, same forced continuation, same target function and baseline,
inseq and our runs taking turns (so a VM's drift in speed hits both); the outputs are compared
(max |ours - inseq| / max |inseq| over the [generated, tokens] matrix after the L2 norm over the
embedding dim, inseq's default aggregation) and the time ratio printed.

Model (``--arch``): the GPT-2-small architecture (``GPT2Config()`` defaults: 12 layers, 768 dims,
50,257 tokens), or Llama / Qwen2 / Gemma at that scale (12 layers of 768, 12 query and 4 key-value
heads, gated MLP of 2048, 32,000 tokens), random init, with a word-level tokenizer over its
vocabulary (``tests/tiny_models.word_tokenizer``).
Cases: prompt 16 + 16 forced tokens, prompt 32 + 64. Methods: saliency, and integrated gradients
(16 Gauss-Legendre steps, ``unk`` baseline as inseq) in float32 and with bf16 autocast.

``--long``: a 4,096-token sequence (GPT-2 with ``n_positions=4096``) attributed with saliency, run in
a child process so its peak RSS (``resource.getrusage``, model included) is the attribution's alone;
a few rows are checked against running their prefix alone. Every step of 4,096 tokens is cubic work
in the length (each of the 4,095 backward passes runs over its prefix, attention quadratic in it):
at GPT-2-small width that is hours on a small CPU, so the every-step run uses a narrow model
(``--long-layers/--long-embd/--long-heads``, default 1 layer of 128 dims), then the last
``--width-steps`` steps (8) run on the full GPT-2-small architecture (12 layers of 768): memory is
set by the longest chunk (the last one), so the peak of the last steps is the peak of a whole run
at that width. The narrow model's kept activations fit the described pass
(``saliency_fast/hf/decoder_pass.py``; its one block is the last, run at each target's row);
GPT-2-small's at 4,096 tokens do not (11 GB), so the width run takes the generic autograd pass.

``--long --long-arch llama`` (or qwen2, gemma): the 12 x 768 model of ``--arch`` itself, one child
per ``--long-runs`` entry ``TOKENS:STEPS`` (default ``4096:16,1024:all``: the last 16 targets of a
4,096-token text, then every target of a 1,024-token text). Ours only: inseq's step loop over
1,023 prefixes of up to 1,023 tokens would take hours here.

    python benchmarks/bench_generation.py                 # both cases, saliency + IG
    python benchmarks/bench_generation.py --quick         # 16 + 16 only, 2 layers, one timed run each
    python benchmarks/bench_generation.py --long          # the 4,096-token memory run only
    python benchmarks/bench_generation.py --long --long-arch llama --long-runs 1024:all
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import interleaved, median_time  # noqa: E402
from saliency_fast.hf.causal_pass import DEFAULT_MAX_BATCH_TOKENS  # noqa: E402

CASES = {"16+16": (16, 16), "32+64": (32, 64)}


# Llama-architecture models at GPT-2-small scale (issue 18): 12 layers of 768, 12 query and 4
# key-value heads, a gated MLP of 2048, a 32k vocabulary; Qwen2 and Gemma the same sizes.
_LLAMA_SIZE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                   intermediate_size=2048, vocab_size=32000, max_position_embeddings=4096)
ARCHS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", _LLAMA_SIZE),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _LLAMA_SIZE),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_LLAMA_SIZE, head_dim=64)),
}


def build(n_layer: int = 12, n_positions: int = 1024, seed: int = 0, arch: str = "gpt2", **overrides):
    """A random ``arch`` model (GPT-2: ``GPT2Config()`` defaults but ``n_layer``/``n_positions``) and a
    word-level tokenizer over its vocabulary."""
    import transformers
    from tiny_models import word_tokenizer

    torch.manual_seed(seed)
    config_name, model_name, sizes = ARCHS[arch]
    if arch == "gpt2":
        sizes = dict(n_layer=n_layer, n_positions=n_positions)
    elif n_layer != 12:
        sizes = dict(sizes, num_hidden_layers=n_layer)
    config = getattr(transformers, config_name)(**{**sizes, **overrides})
    tok = word_tokenizer(config.vocab_size)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return getattr(transformers, model_name)(config).eval(), tok


def texts(n_prompt: int, n_new: int, seed: int = 0, vocab: int | None = None) -> tuple[str, str]:
    """Random words of the word tokenizer (``vocab``: its size; None: GPT-2's, the words ever used)."""
    gen = torch.Generator().manual_seed(seed)
    high = 50000 if vocab is None or vocab > 50000 else vocab - 20
    words = [f"w{int(i)}" for i in torch.randint(0, high, (n_prompt + n_new,), generator=gen)]
    return " ".join(words[:n_prompt]), " ".join(words)


def ours(explainer, prompt, full, method, target, **kwargs):
    from saliency_fast.hf import generation

    return generation.attribute_generation(
        explainer, prompt, generated_text=full, method=method, target=target, aggregate="l2", progress=False,
        **kwargs,
    )


def inseq_l2(inseq_model, prompt, full, target, **kwargs) -> torch.Tensor:
    fn = {"prob": "probability", "logit": "logit"}[target]
    out = inseq_model.attribute(prompt, full, attributed_fn=fn, show_progress=False, **kwargs)
    return out.sequence_attributions[0].target_attributions.float().norm(dim=-1).T  # [T, N]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return float("inf")
    a, b = torch.nan_to_num(a.double()), torch.nan_to_num(b.double())
    return float((a - b).abs().max() / b.abs().max())


def compare(args) -> None:
    import inseq

    import saliency_fast

    inseq_version = importlib.metadata.version("inseq")
    model, tok = build(arch=args.arch, n_layer=2 if args.quick else 12)  # --quick: proves it runs and matches
    explainer = saliency_fast.Explainer(model, tok, device=args.device)
    _, inseq_tok = build(n_layer=1, arch=args.arch)  # inseq reconfigures its tokenizer: give it its own copy
    vocab = model.config.vocab_size
    print(f"backend={saliency_fast.ops.active_backend()} threads={torch.get_num_threads()} "
          f"model={args.arch} (12 x 768, vocabulary {vocab}) random init, target={args.target}")
    header = (f"{'case':>6} {'method':>22} {'dtype':>9} {'inseq s':>9} {'ours s':>8} {'ratio':>7} "
              f"{'inseq cpu':>10} {'ours cpu':>9} {'cpu ratio':>9} {'max rel err':>12}")
    print(header)
    print("-" * len(header))
    rows = []  # the run_all.py schema
    for case in args.cases:
        prompt, full = texts(*CASES[case], vocab=vocab)
        for method in args.methods:
            kwargs = {"n_steps": args.n_steps} if method == "integrated_gradients" else {}
            im = inseq.load_model(model, method, tokenizer=inseq_tok, device=args.device)
            # the same runs and warm-ups for everyone; the long cases once each (inseq's 32+64 IG
            # alone takes minutes), so that the whole benchmark stays under 10 minutes
            long_case = (method != "saliency" and case != "16+16") or args.quick
            runs, warmup = (1, 0) if long_case else (args.repeats, 1)
            outputs, engines = {}, {}

            def run_inseq():
                outputs["inseq"] = inseq_l2(im, prompt, full, args.target, **kwargs)

            fns = {"inseq": run_inseq}
            dtypes = [None, torch.bfloat16] if method == "integrated_gradients" else [None]
            for dtype in dtypes:
                name = "float32" if dtype is None else "bfloat16"
                extra = dict(kwargs, baseline="unk") if method == "integrated_gradients" else {}

                def run_ours(name=name, dtype=dtype, extra=extra):
                    result = ours(explainer, prompt, full, method, args.target, dtype=dtype, **extra)
                    outputs[name], engines[name] = result.scores, result.metadata["engine"]["name"]

                fns[name] = run_ours
            timings = interleaved(fns, runs=runs, warmup=warmup, device=args.device)
            copies = args.n_steps if method == "integrated_gradients" else 1
            floor = median_time(lambda: forward_backward(explainer, full, copies), runs=max(runs, 3), warmup=1,
                                device=args.device)
            t_inseq, c_inseq = timings["inseq"].median, timings["inseq"].cpu_median
            for name in [n for n in fns if n != "inseq"]:
                t_ours, c_ours = timings[name].median, timings[name].cpu_median
                error = rel_error(outputs[name], outputs["inseq"])
                print(f"{case:>6} {method:>22} {name:>9} {t_inseq:9.2f} {t_ours:8.2f} {t_inseq / t_ours:6.1f}x "
                      f"{c_inseq:10.2f} {c_ours:9.2f} {c_inseq / c_ours:8.1f}x {error:12.2e}  {engines[name]}",
                      flush=True)
                less = name != "float32"  # ours in bf16 against inseq in float32
                arch = "" if args.arch == "gpt2" else f"{args.arch} "
                rows.append(row(
                    f"generation {arch}{case} tokens, {method} {name}", f"inseq {inseq_version} float32",
                    timings["inseq"], timings[name], max_diff=error, peer_dtype="float32", ours_dtype=name,
                    floor_s=floor, kind="less-work" if less else "equal-work", device=args.device,
                    accuracy=f"ours bf16 vs inseq fp32: max rel. diff {error:.1e}; inseq in bf16 not measured"
                    if less else None))
    write_rows(args.json, rows)


def forward_backward(explainer, full: str, copies: int) -> None:
    """The floor: one forward of the model over the whole sequence (``copies`` times in one batch:
    IG's path points) and one backward of the target tokens' probabilities summed, to the embeddings."""
    ids = torch.tensor([explainer.tokenizer(full)["input_ids"]] * copies, device=explainer.device)
    embeds = explainer.model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = explainer.model(inputs_embeds=embeds, use_cache=False).logits[:, :-1]
    logits.float().softmax(-1).gather(-1, ids[:, 1:, None]).sum().backward()


def long_child(args) -> None:
    """The 4,096-token run; prints one JSON line (time, peak RSS, check of a few rows)."""
    import saliency_fast
    from saliency_fast.hf import generation

    n = args.long_tokens
    steps = args.long_steps or n - 1
    if args.long_arch == "gpt2":
        model, tok = build(n_layer=args.long_layers, n_positions=n, n_embd=args.long_embd, n_head=args.long_heads)
    else:
        model, tok = build(arch=args.long_arch, max_position_embeddings=max(n, 4096))
    explainer = saliency_fast.Explainer(model, tok)
    prompt, full = texts(n - steps, steps, seed=1, vocab=model.config.vocab_size)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = generation.attribute_generation(
        explainer, prompt, generated_text=full, method="saliency", target="logit", aggregate="l2",
        progress=args.progress, max_batch_tokens=args.max_batch_tokens,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    ids = torch.tensor(result.token_ids)
    errors = []
    for row in (0, steps // 2, steps - 1):  # each row's prefix alone, as a peer would run it
        t = n - steps + row
        prefix = explainer.embedding(ids[:t]).detach().requires_grad_(True)
        logit = model(inputs_embeds=prefix.unsqueeze(0)).logits[0, -1, ids[t]]
        (grad,) = torch.autograd.grad(logit, prefix)
        errors.append(rel_error(result.scores[row, :t], grad.norm(dim=-1)))
    config = model.config
    print(json.dumps({"tokens": n, "steps": steps, "arch": args.long_arch, "layers": config.num_hidden_layers,
                      "embd": config.hidden_size, "engine": result.metadata["engine"],
                      "seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
                      "peak_rss_gib": peak_gib,
                      "rows_checked": 3, "max_rel_err": max(errors), "finite": bool(result.scores[result.mask].isfinite().all())}))


def long_run(args) -> None:
    """GPT-2: every step on the narrow model, then the last ``--width-steps`` steps at GPT-2-small
    width; another ``--long-arch``: its 12 x 768 model, one run per ``--long-runs`` entry."""
    if args.long_arch == "gpt2":
        runs = [(args.long_tokens, args.long_layers, args.long_embd, args.long_heads, args.long_steps)]
        if args.width_steps:
            runs.append((args.long_tokens, 12, 768, 12, args.width_steps))
    else:
        runs = []
        for entry in args.long_runs.split(","):
            tokens, steps = entry.split(":")
            runs.append((int(tokens), 12, 768, 12, 0 if steps == "all" else int(steps)))
    for tokens, layers, embd, heads, steps in runs:
        cmd = [sys.executable, __file__, "--long-child", "--long-tokens", str(tokens), "--long-arch", args.long_arch,
               "--long-layers", str(layers), "--long-embd", str(embd), "--long-heads", str(heads),
               "--long-steps", str(steps), "--max-batch-tokens", str(args.max_batch_tokens)]
        if args.progress:
            cmd.append("--progress")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        _print_long(json.loads(out))


def _print_long(found: dict) -> None:
    every = "every step" if found["steps"] == found["tokens"] - 1 else f"the last {found['steps']} steps"
    print(f"long sequence: {found['tokens']} tokens, {found['arch']} with {found['layers']} layer(s) of "
          f"{found['embd']} dims, saliency at {every}: {found['seconds']:.1f} s "
          f"({found['cpu_seconds']:.1f} s CPU on {found['threads']} thread(s)), peak RSS "
          f"{found['peak_rss_gib']:.2f} GiB (limit 8 GiB), max rel err of {found['rows_checked']} rows vs their "
          f"prefix alone {found['max_rel_err']:.1e}, all scores finite: {found['finite']}, engine {found['engine']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 + 16 only, 2 layers, one timed repeat")
    parser.add_argument("--arch", default="gpt2", choices=sorted(ARCHS),
                        help="gpt2: GPT-2-small; llama, qwen2, gemma: 12 x 768, GQA 12/4 heads, MLP 2048, 32k words")
    parser.add_argument("--cases", default="16+16,32+64")
    parser.add_argument("--methods", default="saliency,integrated_gradients")
    parser.add_argument("--target", default="prob", choices=["prob", "logit"],
                        help="attributed score (inseq's default is the probability)")
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--long", action="store_true", help="only the 4,096-token memory runs")
    parser.add_argument("--long-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--long-tokens", type=int, default=4096)
    parser.add_argument("--long-arch", default="gpt2", choices=sorted(ARCHS),
                        help="gpt2: the narrow + width runs; llama, qwen2, gemma: the 12 x 768 model, --long-runs")
    parser.add_argument("--long-runs", default="4096:16,1024:all",
                        help="TOKENS:STEPS runs of a --long-arch other than gpt2 (STEPS: last targets, or all)")
    parser.add_argument("--long-layers", type=int, default=1)
    parser.add_argument("--long-embd", type=int, default=128)
    parser.add_argument("--long-heads", type=int, default=2)
    parser.add_argument("--long-steps", type=int, default=0, help="attribute only the last K steps (0: all)")
    parser.add_argument("--width-steps", type=int, default=8,
                        help="then the last K steps at GPT-2-small width, 12 layers (0: skip)")
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (both sides)")
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    args.cases = ["16+16"] if args.quick else args.cases.split(",")
    args.methods = args.methods.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 1
    if args.long_child:
        long_child(args)
    elif args.long:
        long_run(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
