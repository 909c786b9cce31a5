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
import datetime
import json
import os
import pathlib
import random
import re
import signal
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np

from bench_jobs import short_texts

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only
MODEL = "all-MiniLM-L6-v2"
EXPLAIN = f"/v1/models/{MODEL}:explain"
CLIENTS = 16
ROUND_SECONDS = 300  # a round that takes longer is cut short (and says so)
MALFORMED_SHARE = 0.05


def start_server(max_batch_size: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "saliency_fast", "serve", "--host", HOST, "--port", "0", "--log-level", "warning",
         "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)],
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
    started = time.perf_counter()
    extra = [disconnect_mid_request(url), leave_before_answer(url), oversized(url)] if faults else []
    done = await asyncio.wait_for(asyncio.gather(*(client(url, t, m, answers) for t, m in plans), *extra),
                                  ROUND_SECONDS)
    seconds = time.perf_counter() - started
    return {"answers": answers, "seconds": seconds, "sent": sum(len(t) for t, _ in plans),
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
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server (they alternate)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="6 requests per client, 1 round each")
    parser.add_argument("--json", type=pathlib.Path, help="write the rows here (for run_all.py)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 6, 1
    import torch

    from saliency_fast import Explainer
    from saliency_fast.hf.default_model import default_model

    torch.set_num_threads(1)
    pool = sorted(set(short_texts(64, seed=1)))
    explainer = Explainer(*default_model(), labels=["positive", "negative"])
    direct = {t: explainer.attribute(t).scores.float().numpy() for t in pool}
    servers = {"batched": start_server(args.max_batch_size, args.max_wait_ms), "single": start_server(1, 0)}
    print(f"{CLIENTS} clients x {args.requests} requests a round, {args.rounds} rounds per server, "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for r in range(args.rounds):
            for name, (_, url) in servers.items():
                found = check(asyncio.run(load(url, pool, args.requests, seed=r, faults=False)), direct)
                results[name].append(found)
                print(f"  round {r} {name}: {found['per_s']:.1f} explanations/s, p50 "
                      f"{percentile(found['latencies'], 50) * 1e3:.0f} ms, {found['good_correct']}/"
                      f"{found['good_sent']} correct, load average {os.getloadavg()[0]:.1f}", flush=True)
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


def summary(rounds: list[dict]) -> dict:
    latencies = sorted(x for r in rounds for x in r["latencies"])
    return {"per_s": statistics.median(r["per_s"] for r in rounds), "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "max_diff": max(r["max_diff"] for r in rounds),
            "correct": sum(r["good_correct"] for r in rounds), "sent": sum(r["good_sent"] for r in rounds)}


def report(args, results, faults, fault_outcomes, alive, after) -> None:
    batched, single = summary(results["batched"]), summary(results["single"])
    ratio = batched["per_s"] / single["per_s"]
    for name, s in (("batched", batched), ("max-batch-size 1", single)):
        print(f"{name}: {s['per_s']:.1f} explanations/s (median of rounds), p50 {s['p50'] * 1e3:.0f} ms, "
              f"p99 {s['p99'] * 1e3:.0f} ms, {s['correct']}/{s['sent']} equal to Explainer.attribute "
              f"(max diff {s['max_diff']:.1e})")
    print(f"throughput ratio {ratio:.2f}x (target >= 2x)")
    print(f"faults: {faults['good_sent']} good requests sent, {faults['good_answered']} answered, "
          f"{faults['good_correct']} correct, {faults['good_lost']} lost; {faults['malformed_sent']} malformed sent, "
          f"{faults['malformed_400']} got 400; {fault_outcomes[0]}; {fault_outcomes[1]}; oversized body got "
          f"{fault_outcomes[2]}; server alive after: {alive} (health), {after} (explain)")
    ok = (batched["correct"] == batched["sent"] and single["correct"] == single["sent"]
          and faults["good_correct"] == faults["good_sent"] and faults["good_lost"] == 0
          and faults["malformed_400"] == faults["malformed_sent"] and fault_outcomes[2] == 413 and alive
          and after == 200)
    print("all checks passed" if ok else "CHECKS FAILED")
    if args.json is not None:
        row = {
            "workload": f"serve: {CLIENTS} clients x single-text explain, MiniLM zero-shot saliency, "
                        f"dynamic batching (max {args.max_batch_size}, {args.max_wait_ms:g} ms); s per explanation",
            "peer": "same server, --max-batch-size 1", "peer_s": 1 / single["per_s"], "ours_s": 1 / batched["per_s"],
            "ratio": ratio, "max_diff": max(batched["max_diff"], single["max_diff"]), "floor_s": None,
            "p50_s": batched["p50"], "p99_s": batched["p99"], "peer_p50_s": single["p50"], "peer_p99_s": single["p99"],
            "faults": {k: v for k, v in faults.items() if k != "latencies"},
            "date": datetime.date.today().isoformat(),
        }
        args.json.write_text(json.dumps({"rows": [row]}, indent=2))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
