#!/usr/bin/env python3
"""End-to-end tokens/s through the HTTP API: unguided vs one ARM vs two ARMs, at several
concurrencies, in one run (so the figures are comparable as ratios).

Usage (with a cluster started by `genarm launch`, e.g. SmolLM2 as base and as two stand-in ARMs):
    python3 benchmarks/e2e_throughput.py --url http://127.0.0.1:8000 --arms a,b \
        --concurrency 1,16 --requests 16 --max-tokens 32
Only the standard library is used. Prints a Markdown table.
"""
import argparse
import json
import threading
import time
import urllib.request

PROMPTS = [
    "Write a short note about the sea.",
    "List three fruits and say why they are good.",
    "Explain what a computer does in two sentences.",
    "Describe a quiet morning in a small town.",
]


def complete(url, model, prompt, max_tokens, rewards):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if rewards:
        body["guidance"] = {"rewards": rewards, "beta": 1.0}
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return out["usage"]["completion_tokens"]


def run(url, model, concurrency, requests, max_tokens, rewards):
    lock = threading.Lock()
    state = {"next": 0, "tokens": 0}

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    return
                state["next"] += 1
            n = complete(url, model, PROMPTS[i % len(PROMPTS)], max_tokens, rewards)
            with lock:
                state["tokens"] += n

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return state["tokens"] / elapsed, state["tokens"], elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--arms", default="", help="comma-separated reward names served by the cluster")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    with urllib.request.urlopen(args.url + "/v1/models", timeout=30) as r:
        model = json.load(r)["data"][0]["id"]
    arms = [a for a in args.arms.split(",") if a]
    cases = [("unguided", {})]
    if arms:
        cases.append(("1 ARM", {arms[0]: 1.0}))
    if len(arms) > 1:
        cases.append(("2 ARMs", {arms[0]: 1.0, arms[1]: 0.5}))
    complete(args.url, model, PROMPTS[0], 4, {})  # warm-up
    print("| concurrency | case | tokens | seconds | tokens/s | vs unguided |")
    print("|---|---|---|---|---|---|")
    for c in [int(x) for x in args.concurrency.split(",")]:
        base = None
        for name, rewards in cases:
            tps, tokens, secs = run(args.url, model, c, max(args.requests, c), args.max_tokens, rewards)
            base = base or tps
            print(f"| {c} | {name} | {tokens} | {secs:.1f} | {tps:.1f} | {tps / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
