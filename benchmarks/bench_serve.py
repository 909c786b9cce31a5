"""Explanations per second of ``saliency-fast serve`` under 16 concurrent clients: dynamic batching
against the same server with ``--max-batch-size 1``, then the same load with faults.

The embedded all-MiniLM-L6-v2 (zero-shot sentiment, saliency), short single-text requests. Two
servers run as child processes on 127.0.0.1 (loopback only), each with one torch thread; this
process is the load: 16 clients (httpx, one connection each) send their requests one after
another, ``--requests`` each. The rounds alternate between the two servers, so a drift in the
machine's speed hits both. Every answer is checked against a direct ``Explainer.attribute`` of
its text alone (to 1e-6). Reported: explanations/s, their ratio, p50 / p99 latency.

The fault round sends the batched server the same load with 5 % malformed bodies, one client that
disconnects mid-request (half a body, then gone), one that leaves before its answer, and one
oversized body; it counts the good requests sent, answered, correct and lost, and the server must
still answer its health check. Every loop is bounded in count and time. Run:
``python benchmarks/bench_serve.py [--requests 12] [--rounds 2] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import Timing  # noqa: E402
from benchmarks.bench_jobs import short_texts  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only
MODEL = "all-MiniLM-L6-v2"
EXPLAIN = f"/v1/models/{MODEL}:explain"
CLIENTS = 16
ROUND_SECONDS = 300  # a round that takes longer is cut short (and says so)
MALFORMED_SHARE = 0.05


def start_server(max_batch_size: int, max_wait_ms: float, device: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "saliency_fast", "serve", "--host", HOST, "--port", "0", "--log-level", "warning",
         "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--device", device],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )
    for line in process.stderr:
        found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return process, found.group(1)
    raise RuntimeError(f"the server did not start (exit status {process.wait()})")


async def client(url: str, texts: list[str], malformed: list[bool], answers: list) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for text, bad in zip(texts, malformed):
            started = time.perf_counter()
            try:
                if bad:
                    response = await http.post(EXPLAIN, content=b'{"instances": [' + text.encode())
                else:
                    response = await http.post(EXPLAIN, json={"instances": [text]})
                answers.append((text, bad, response.status_code, response.content, time.perf_counter() - started))
            except httpx.HTTPError as exc:  # counted as lost
                answers.append((text, bad, None, repr(exc).encode(), time.perf_counter() - started))


async def disconnect_mid_request(url: str) -> str:
    """Headers and half the declared body, then the connection closes: the server must shrug it off."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(HOST, port)
    body = json.dumps({"instances": ["the movie was fine."]}).encode()
    writer.write(f"POST {EXPLAIN} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    return "half a body, then closed"


async def leave_before_answer(url: str) -> str:
    """A whole request, then gone before the answer (the server works for nobody, and must not stall)."""
    async with httpx.AsyncClient(base_url=url, timeout=0.05) as http:
        try:
            await http.post(EXPLAIN, json={"instances": ["the ending was slow and i hated it."]})
        except httpx.TimeoutException:
            return "left before the answer"
    return "answered before it could leave"


async def oversized(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        response = await http.post(EXPLAIN, content=b'{"instances": ["' + b"a" * (2 << 20) + b'"]}')
        return response.status_code


async def load(url: str, pool: list[str], requests: int, seed: int, faults: bool) -> dict:
    rng = random.Random(seed)
    plans = [([rng.choice(pool) for _ in range(requests)],
              [faults and rng.random() < MALFORMED_SHARE for _ in range(requests)]) for _ in range(CLIENTS)]
    answers: list = []
    started, cpu_started = time.perf_counter(), time.process_time()
    extra = [disconnect_mid_request(url), leave_before_answer(url), oversized(url)] if faults else []
    done = await asyncio.wait_for(asyncio.gather(*(client(url, t, m, answers) for t, m in plans), *extra),
                                  ROUND_SECONDS)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"answers": answers, "seconds": seconds, "cpu_seconds": cpu_seconds, "sent": sum(len(t) for t, _ in plans),
            "sent_malformed": sum(sum(m) for _, m in plans), "faults": done[CLIENTS:]}


def check(round_: dict, direct: dict) -> dict:
    """Counts of the round's answers, the largest score difference from the direct results."""
    good = [a for a in round_["answers"] if not a[1]]
    correct, worst = 0, 0.0
    for text, _, status, content, _ in good:
        if status != 200:
            continue
        explanation = json.loads(content)["explanations"][0]
        diff = float(np.nanmax(np.abs(np.array(explanation["scores"], float) - direct[text]), initial=0.0))
        same_nan = np.array_equal(np.isnan(np.array(explanation["scores"], float)), np.isnan(direct[text]))
        worst = max(worst, diff if same_nan else float("inf"))
        correct += diff <= 1e-6 and same_nan
    latencies = sorted(a[4] for a in good if a[2] == 200)
    bad = [a for a in round_["answers"] if a[1]]
    return {
        "good_sent": round_["sent"] - round_["sent_malformed"], "good_answered": sum(a[2] == 200 for a in good),
        "good_correct": correct, "good_lost": sum(a[2] != 200 for a in good) + round_["sent"] - len(round_["answers"]),
        "malformed_sent": round_["sent_malformed"], "malformed_400": sum(a[2] == 400 for a in bad),
        "max_diff": worst, "per_s": sum(a[2] == 200 for a in good) / round_["seconds"], "latencies": latencies,
        "cpu_per_answer": round_["cpu_seconds"] / max(1, sum(a[2] == 200 for a in good)),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server (they alternate)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--warmup-requests", type=int, default=2, help="untimed requests per client first")
    parser.add_argument("--device", default="cpu", help="the servers' torch device")
    parser.add_argument("--quick", action="store_true", help="6 requests per client, 1 round each")
    parser.add_argument("--json", type=pathlib.Path, help="write the rows here (for run_all.py)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 6, 1
    import torch

    from saliency_fast import Explainer
    from saliency_fast.hf import default_model

    torch.set_num_threads(1)
    pool = sorted(set(short_texts(64, seed=1)))
    explainer = Explainer(*default_model(), labels=["positive", "negative"])
    direct = {t: explainer.attribute(t).scores.float().numpy() for t in pool}
    servers = {"batched": start_server(args.max_batch_size, args.max_wait_ms, args.device),
               "single": start_server(1, 0, args.device)}
    print(f"{CLIENTS} clients x {args.requests} requests a round, {args.rounds} rounds per server, "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for name, (_, url) in servers.items():  # untimed: first calls pay for lazy set-up
            asyncio.run(load(url, pool, args.warmup_requests, seed=-1, faults=False))
        for r in range(args.rounds):
            for name, (_, url) in servers.items():
                found = check(asyncio.run(load(url, pool, args.requests, seed=r, faults=False)), direct)
                results[name].append(found)
                print(f"  round {r} {name}: {found['per_s']:.1f} explanations/s, p50 "
                      f"{percentile(found['latencies'], 50) * 1e3:.0f} ms, {found['good_correct']}/"
                      f"{found['good_sent']} correct, load average {os.getloadavg()[0]:.1f}", flush=True)
        for name, (_, url) in servers.items():
            batches = httpx.get(url + "/metrics", timeout=10).text
            count, total = (sum(float(line.split()[-1]) for line in batches.splitlines()
                                if line.startswith(f"saliency_serve_batch_size_{what} ")) for what in ("count", "sum"))
            print(f"  {name}: {total / max(count, 1):.1f} instances per Explainer call on average", flush=True)
        url = servers["batched"][1]
        fault_round = asyncio.run(load(url, pool, args.requests, seed=99, faults=True))
        faults = check(fault_round, direct)
        alive = httpx.get(url + "/v2/health/live", timeout=10).status_code == 200
        after = httpx.post(url + EXPLAIN, json={"instances": [pool[0]]}, timeout=60).status_code
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in servers.values():
            process.wait(60)
    report(args, results, faults, fault_round["faults"], alive, after)


def summary(rounds: list[dict], warmup: int) -> dict:
    latencies = sorted(x for r in rounds for x in r["latencies"])
    timing = Timing(tuple(1 / r["per_s"] for r in rounds), tuple(r["cpu_per_answer"] for r in rounds), warmup)
    return {"timing": timing, "per_s": 1 / timing.median, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "max_diff": max(r["max_diff"] for r in rounds),
            "correct": sum(r["good_correct"] for r in rounds), "sent": sum(r["good_sent"] for r in rounds)}


def report(args, results, faults, fault_outcomes, alive, after) -> None:
    batched, single = (summary(results[name], args.warmup_requests) for name in ("batched", "single"))
    ratio = batched["per_s"] / single["per_s"]
    for name, s in (("batched", batched), ("max-batch-size 1", single)):
        print(f"{name}: {s['per_s']:.1f} explanations/s (median of rounds), p50 {s['p50'] * 1e3:.0f} ms, "
              f"p99 {s['p99'] * 1e3:.0f} ms, {s['correct']}/{s['sent']} equal to Explainer.attribute "
              f"(max diff {s['max_diff']:.1e})")
    print(f"throughput ratio {ratio:.2f}x (target >= 2x); rates are medians over rounds of explanations per second")
    print(f"faults: {faults['good_sent']} good requests sent, {faults['good_answered']} answered, "
          f"{faults['good_correct']} correct, {faults['good_lost']} lost; {faults['malformed_sent']} malformed sent, "
          f"{faults['malformed_400']} got 400; {fault_outcomes[0]}; {fault_outcomes[1]}; oversized body got "
          f"{fault_outcomes[2]}; server alive after: {alive} (health), {after} (explain)")
    ok = (batched["correct"] == batched["sent"] and single["correct"] == single["sent"]
          and faults["good_correct"] == faults["good_sent"] and faults["good_lost"] == 0
          and faults["malformed_400"] == faults["malformed_sent"] and fault_outcomes[2] == 413 and alive
          and after == 200)
    print("all checks passed" if ok else "CHECKS FAILED")
    note = (f"{CLIENTS} clients, single-text requests; seconds per explanation (rate {batched['per_s']:.1f} vs "
            f"{single['per_s']:.1f}/s, {ratio:.2f}x); latency p50/p99 {batched['p50']:.2f}/{batched['p99']:.2f} s vs "
            f"{single['p50']:.2f}/{single['p99']:.2f} s; with faults {faults['good_answered']}/{faults['good_sent']} "
            f"good answered correctly, {faults['good_lost']} lost")
    workload = (f"serve: {CLIENTS} HTTP clients x single-text explain, MiniLM zero-shot saliency, batching up to "
                f"{args.max_batch_size} ({args.max_wait_ms:g} ms)")
    found = row(workload, "same server, --max-batch-size 1", single["timing"], batched["timing"],
                max_diff=max(batched["max_diff"], single["max_diff"]), peer_dtype="float32", ours_dtype="float32",
                floor_s=None, kind="design", device=args.device)
    write_rows(args.json, [{**found, "note": note, "faults": {k: v for k, v in faults.items() if k != "latencies"}}])
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
