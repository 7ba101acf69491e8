#!/usr/bin/env python3
"""reference_loop.py: the GenARM decoding loop as the published reference code runs it.

HF transformers + torch on CPU, one prompt at a time, the base and every ARM each with its own
KV cache (past_key_values), per step: log_softmax of each model's next-token logits in f32,
fused = l_base + sum_i alpha_i * l_i, then temperature / top-k / top-p sampling (T = 0: argmax).
It runs on HF-format directories (`genarm merge` exports the GGUF base and a LoRA ARM to them).

    python benchmarks/reference_loop.py --base BASE_DIR [--arm ARM_DIR:ALPHA ...] \
        --prompts prompts.jsonl --max-tokens 64 [--limit N] [--temperature 0] --out ref.json

Prints and writes: prompts, generated tokens, wall seconds, tokens/s (and per-prompt details).
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def read_prompts(path, limit):
    prompts = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            prompts.append(json.loads(line)["prompt"] if line.startswith("{") else line)
    return prompts[:limit] if limit else prompts


def sample(fused, temperature, top_k, top_p, generator):
    if temperature == 0:
        return int(torch.argmax(fused))  # lowest id on ties, as torch.argmax returns the first
    logits = fused / temperature
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[idx[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate(base, arms, ids, max_tokens, temperature, top_k, top_p, eos_ids, generator):
    inp = torch.tensor([ids])
    out = base(input_ids=inp, use_cache=True)
    base_past, base_logits = out.past_key_values, out.logits[0, -1]
    arm_state = []
    for model, alpha in arms:
        o = model(input_ids=inp, use_cache=True)
        arm_state.append([model, alpha, o.past_key_values, o.logits[0, -1]])
    tokens = []
    for _ in range(max_tokens):
        fused = torch.log_softmax(base_logits.float(), dim=-1)
        for _, alpha, _, logits in arm_state:
            fused = fused + alpha * torch.log_softmax(logits.float(), dim=-1)
        tok = sample(fused, temperature, top_k, top_p, generator)
        tokens.append(tok)
        if tok in eos_ids:
            break
        nxt = torch.tensor([[tok]])
        out = base(input_ids=nxt, past_key_values=base_past, use_cache=True)
        base_past, base_logits = out.past_key_values, out.logits[0, -1]
        for st in arm_state:
            o = st[0](input_ids=nxt, past_key_values=st[2], use_cache=True)
            st[2], st[3] = o.past_key_values, o.logits[0, -1]
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="HF model directory of the base")
    ap.add_argument("--arm", action="append", default=[], help="ARM_DIR:ALPHA (repeat for several ARMs)")
    ap.add_argument("--prompts", required=True, help="JSONL {\"prompt\": ...} or one prompt per line")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--warmup", type=int, default=1, help="prompts run first and not timed")
    ap.add_argument("--out", help="write the report here as JSON")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.base)
    base = AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32).eval()
    arms = []
    for spec in args.arm:
        path, alpha = spec.rsplit(":", 1)
        arms.append((AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval(), float(alpha)))
    eos = base.generation_config.eos_token_id
    eos_ids = set() if args.ignore_eos else set(eos if isinstance(eos, list) else [eos])

    prompts = read_prompts(args.prompts, args.limit)
    encoded = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
               for p in prompts]
    # transformers 5 returns a BatchEncoding, 4.x a plain list of ids.
    encoded = [list(e["input_ids"]) if hasattr(e, "keys") else list(e) for e in encoded]
    gen = torch.Generator().manual_seed(args.seed)
    for ids in encoded[: args.warmup]:
        generate(base, arms, ids, 4, args.temperature, args.top_k, args.top_p, eos_ids, gen)

    per_prompt = []
    started = time.perf_counter()
    for p, ids in zip(prompts, encoded):
        t0 = time.perf_counter()
        out = generate(base, arms, ids, args.max_tokens, args.temperature, args.top_k, args.top_p, eos_ids, gen)
        per_prompt.append({"prompt": p, "prompt_tokens": len(ids), "tokens": len(out),
                           "seconds": time.perf_counter() - t0, "text": tok.decode(out, skip_special_tokens=True)})
    wall = time.perf_counter() - started
    total = sum(r["tokens"] for r in per_prompt)
    report = {
        "loop": "reference (transformers, one prompt at a time, one KV cache per model)",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "base": args.base, "arms": args.arm, "prompts": len(prompts), "max_tokens": args.max_tokens,
        "temperature": args.temperature, "tokens": total, "seconds": wall, "tokens_per_s": total / wall,
        "per_prompt": per_prompt,
    }
    print(f"reference loop: {len(prompts)} prompts, {total} tokens in {wall:.1f} s = {total / wall:.2f} tok/s "
          f"({len(arms)} ARM(s), {torch.get_num_threads()} threads)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
