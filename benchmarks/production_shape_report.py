#!/usr/bin/env python3
"""production_shape_report.py OUT: the report of benchmarks/production_shape.sh.

Reads OUT/run.json (grid, rows, provenance), OUT/cells.jsonl (one line per cell run) and, per
cell, its genarm bench report (cells/<id>/bench/bench.json) and the router's final /metrics
(cells/<id>/metrics.txt); writes OUT/production_shape.json (every cell's raw figures) and
OUT/production_shape.md (the table), and prints the table. Python standard library only.

Figures per cell, all over genarm bench's measured phase (its /metrics scrapes before and after)
unless said otherwise:
  step wall mean      genarm_step_duration_seconds sum / count
  ITL p50             the clients' inter-token gaps (SSE chunk arrivals), median: the step
                      period as a stream sees it (the router's histogram buckets are too coarse
                      for a median)
  forward             the slowest worker's self-reported forward per step (the simulated time)
  router overhead     genarm_step_router_overhead_seconds (step wall − slowest forward), and its
                      share of the step wall (sum over sum)
  fusion + sampling   genarm_fusion_sampling_seconds per step
  wire / step         genarm_step_wire_bytes_total per step (measured); where the router does
                      not export it: batch × V × bytes per logit × models, marked "computed"
  tok/s               output tokens of completed requests / the measured phase's wall time
  vs 0 ARMs           tok/s ÷ tok/s of the cell with the same wire, batch, vocab and sampling
                      and no ARM
  wire % of f32 rows  wire / step ÷ (batch × V × 4 bytes × models): against full f32 rows
  refined             sparse wire only: the tokens for which refined certificates were fetched
                      (genarm_sparse_refined_total over certified + fallbacks); most of them are
                      then certified without whole rows
  router CPU / step   user + system CPU time of the router process (all threads, /proc) over the
                      bench, warm-up included, per step in that window; on this machine the router
                      shares the cores with the simulated workers and the client
  workers CPU / step  the same for all simulated workers together
  fallback            sparse wire only: the tokens whose full rows were fetched over every token
                      decided on the sparse wire (genarm_sparse_fallbacks_total over certified +
                      fallbacks), over the router's life (warm-up included); "n/a" for the
                      full-row wire
"""

import json
import os
import re
import sys

BYTES_PER_LOGIT = {"f32": 4, "bf16": 2, "f16": 2}
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def read_metrics(path):
    """{name: total over every label set} of a Prometheus text exposition."""
    totals = {}
    if not os.path.exists(path):
        return totals
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m or line.startswith("#"):
                continue
            try:
                v = float(m.group(3))
            except ValueError:
                continue
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + v
    return totals


def fallback_rate(wire, metrics):
    """(rate or None, the counters used or why not): the share of the sparse wire's tokens whose
    full rows had to be fetched, fallbacks / (certified + fallbacks)."""
    if wire == "full":
        return None, "n/a (full-row wire)"
    if "genarm_sparse_certified_total" not in metrics:
        return None, "the router exports no genarm_sparse_certified_total"
    # A labelled counter appears once incremented: no genarm_sparse_fallbacks_total line is 0.
    fallbacks = metrics.get("genarm_sparse_fallbacks_total", 0.0)
    decided = metrics["genarm_sparse_certified_total"] + fallbacks
    if not decided:
        return None, "no token was decided on the sparse wire"
    return fallbacks / decided, "genarm_sparse_fallbacks_total / (genarm_sparse_certified_total + genarm_sparse_fallbacks_total)"


def refined_rate(wire, metrics):
    """The share of the sparse wire's tokens for which refined certificates were fetched
    (genarm_sparse_refined_total over certified + fallbacks), or None."""
    if wire == "full" or "genarm_sparse_certified_total" not in metrics:
        return None
    decided = metrics["genarm_sparse_certified_total"] + metrics.get("genarm_sparse_fallbacks_total", 0.0)
    return metrics.get("genarm_sparse_refined_total", 0.0) / decided if decided else None


def cpu_per_step(cell, key):
    """CPU seconds per step of the router or of all simulated workers together, over the bench
    (warm-up included), or None for a cell measured before the script recorded CPU."""
    cpu = cell.get("cpu") or {}
    steps = cpu.get("steps")
    return cpu[key] / 1e3 / steps if steps and key in cpu else None


def cell_figures(out, cell, grid):
    d = os.path.join(out, cell["dir"])
    with open(os.path.join(d, "bench", "bench.json")) as f:
        bench = json.load(f)
    runs = bench["runs"]
    if len(runs) != 1:
        raise SystemExit(f"{d}/bench/bench.json: expected one run, found {len(runs)}")
    run = runs[0]
    acc = run.get("step_accounting") or {}
    metrics = read_metrics(os.path.join(d, "metrics.txt"))
    models = 1 + cell["arms"]
    wire_bytes = acc.get("wire_bytes_per_step")
    wire_source = "measured (genarm_step_wire_bytes_total)"
    if wire_bytes is None:
        wire_bytes = cell["batch"] * cell["vocab"] * BYTES_PER_LOGIT[grid["logits_dtype"]] * models
        wire_source = "computed (batch × V × bytes per logit × models)"
    rate, rate_source = fallback_rate(cell["wire"], metrics)
    seq_steps = (acc.get("deltas") or {}).get("genarm_step_sequences_total")
    return {
        "requests": run["requests"],
        "errors": run["errors"] + run["warmup_errors"],
        "output_tokens": run["output_tokens"],
        "duration_s": run["duration_s"],
        "output_tokens_per_s": run["output_tokens_per_s"],
        "mean_output_tokens": run.get("mean_output_tokens"),
        "finish_reasons": run.get("finish_reasons"),
        "steps": acc.get("steps"),
        "full_batch_step_equivalents": (seq_steps / cell["batch"]) if seq_steps else None,
        "mean_batch_size": acc.get("mean_batch_size"),
        "step_wall_mean_s": acc.get("mean_step_wall_s"),
        "itl_p50_s": (run.get("itl") or {}).get("p50"),
        "itl_p95_s": (run.get("itl") or {}).get("p95"),
        "slowest_forward_mean_s": acc.get("mean_slowest_forward_s"),
        "router_overhead_mean_s": acc.get("mean_router_overhead_s"),
        "router_overhead_pct": acc.get("router_overhead_pct"),
        "fusion_sampling_per_step_s": acc.get("fusion_sampling_per_step_s"),
        "wire_bytes_per_step": wire_bytes,
        "wire_bytes_source": wire_source,
        "wire_bytes_per_token": acc.get("wire_bytes_per_token"),
        "wire_share_of_f32_rows": wire_bytes / (cell["batch"] * cell["vocab"] * 4 * models),
        "fallback_rate": rate,
        "fallback_source": rate_source,
        "refined_rate": refined_rate(cell["wire"], metrics),
        "router_cpu_per_step_s": cpu_per_step(cell, "router_ms"),
        "workers_cpu_per_step_s": cpu_per_step(cell, "workers_ms"),
        "accounting_note": acc.get("note"),
        "bench_json": os.path.join(cell["dir"], "bench", "bench.json"),
        "bench_provenance": bench.get("provenance"),
    }


def ms(x, digits=1):
    return "n/a" if x is None else f"{x * 1e3:.{digits}f}"


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: production_shape_report.py OUT")
    out = sys.argv[1]
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    with open(os.path.join(out, "cells.jsonl")) as f:
        cells = [json.loads(line) for line in f if line.strip()]
    if not cells:
        raise SystemExit(f"{out}/cells.jsonl lists no cell")
    for c in cells:
        c["figures"] = cell_figures(out, c, run["grid"])
    key = lambda c: (c["wire"], c["batch"], c["vocab"], c["sampling"])
    unguided = {key(c): c["figures"]["output_tokens_per_s"] for c in cells if c["arms"] == 0}
    for c in cells:
        base = unguided.get(key(c))
        tps = c["figures"]["output_tokens_per_s"]
        c["figures"]["vs_unguided"] = (tps / base) if base and c["arms"] > 0 else None

    g = run["grid"]
    lines = []
    cmd = " ".join(run["command"])
    env = (f"FORWARD_MS={g['forward_ms']} MAX_TOKENS={g['max_tokens']} ROUNDS={g['rounds']} "
           f"LOGITS_DTYPE={g['logits_dtype']} SEED={g['seed']} sparse candidates: {g.get('sparse_candidates', '?')}, "
           f"refined: {g.get('sparse_refine_candidates', '?')}")
    lines.append(f"`{cmd}` ({env}); genarm commit `{run['git_commit']}`"
                 f"{' (tree dirty)' if run['git_dirty'] else ''}; {run['host']}, {run['cpus']} CPUs, "
                 f"load average {run['load_before']} before and {run.get('load_after', '?')} after; "
                 f"rows `{os.path.basename(run['rows']['path'])}` (sha256 `{run['rows']['sha256'][:12]}`, "
                 f"{run['rows']['record_prompts']} prompts × {run['rows']['record_tokens']} positions of "
                 f"SmolLM2-135M and {', '.join(run['rows']['arms'])}).")
    lines.append("")
    lines.append("| wire | batch | ARMs | V | sampling | mean batch | steps | step wall mean (ms) | ITL p50 (ms) "
                 "| forward (ms) | router overhead (ms, % of step) | fusion + sampling (ms) | wire MB / step "
                 "| wire % of f32 rows | tok/s | vs 0 ARMs | refined | fallback | router CPU / step (ms) "
                 "| workers CPU / step (ms) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    warnings = []
    for c in cells:
        f = c["figures"]
        pct = f["router_overhead_pct"]
        over = ms(f["router_overhead_mean_s"]) + ("" if pct is None else f" ({pct:.0f}%)")
        wire = f"{f['wire_bytes_per_step'] / 1e6:.1f}" + (" (computed)" if f["wire_bytes_source"].startswith("computed") else "")
        vs = "—" if f["vs_unguided"] is None else f"{f['vs_unguided']:.2f}"
        fb = "n/a" if c["wire"] == "full" else ("?" if f["fallback_rate"] is None else f"{100 * f['fallback_rate']:.2f}%")
        rf = "n/a" if f["refined_rate"] is None else f"{100 * f['refined_rate']:.2f}%"
        mb = "n/a" if f["mean_batch_size"] is None else f"{f['mean_batch_size']:.1f}"
        steps = "n/a" if f["steps"] is None else f"{f['steps']:.0f}"
        lines.append(f"| {c['wire']} | {c['batch']} | {c['arms']} | {c['vocab']} | {c['sampling']} | {mb} | {steps} "
                     f"| {ms(f['step_wall_mean_s'])} | {ms(f['itl_p50_s'])} | {ms(f['slowest_forward_mean_s'])} "
                     f"| {over} | {ms(f['fusion_sampling_per_step_s'], 2)} | {wire} | {100 * f['wire_share_of_f32_rows']:.1f}% "
                     f"| {f['output_tokens_per_s']:.0f} "
                     f"| {vs} | {rf} | {fb} | {ms(f['router_cpu_per_step_s'])} | {ms(f['workers_cpu_per_step_s'])} |")
        fbe = f["full_batch_step_equivalents"]
        if fbe is not None and fbe < 30:
            warnings.append(f"{c['id']}: only {fbe:.0f} full-batch steps' worth of sequences (raise MAX_TOKENS or ROUNDS)")
        if c["wire"] != "full" and f["fallback_rate"] is None:
            warnings.append(f"{c['id']}: fallback rate unknown: {f['fallback_source']}")
        if f["accounting_note"]:
            warnings.append(f"{c['id']}: {f['accounting_note']}")
    if warnings:
        lines.append("")
        lines.extend(f"- warning: {w}" for w in warnings)
    md = "\n".join(lines) + "\n"

    report = dict(run)
    report["tool"] = "benchmarks/production_shape.sh"
    report["figure_definitions"] = __doc__.split("Figures per cell,", 1)[1].strip()
    report["cells"] = cells
    with open(os.path.join(out, "production_shape.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "production_shape.md"), "w") as f:
        f.write("# Production shape (simulated GPU workers)\n\n" + md)
    print(md, end="")
    print(f"\nwrote {out}/production_shape.json and {out}/production_shape.md", file=sys.stderr)


if __name__ == "__main__":
    main()
