"""Ratios against the performance targets, and the Markdown table the README shows."""

from __future__ import annotations

import math
from collections import defaultdict

from benchmarks.cases import MAX_K, SPECULATIVE_K

MB = 2**20


def ratios(times: dict[str, float]) -> dict[str, float | None]:
    """Each target's ratio from one cell's median times (seconds per generate call); None where not measured."""
    t = defaultdict(lambda: math.nan, times)
    out: dict[str, float] = {}
    for k in range(1, MAX_K + 1):
        streams = t["single:base"] + t["single:anti"] + sum(t[f"single:expert{i}"] for i in range(k))
        out[f"overhead_k{k}"] = t[f"compose:k{k}"] / streams
        out[f"naive_speedup_k{k}"] = t[f"naive:k{k}"] / t[f"compose:k{k}"]
    out["stacking_speedup_k3"] = t["compose:k3:unstacked"] / t["compose:k3"]
    out["prompted_speedup"] = t["prompted:one-by-one"] / t["prompted:batched"]
    out["k0_over_transformers"] = t["single:base"] / t["transformers:base"]
    for k in SPECULATIVE_K:
        out[f"speculative_speedup_k{k}"] = t[f"compose:k{k}"] / t[f"speculative:k{k}"]
        out[f"speculative_speedup_k{k}_sample"] = t[f"compose:k{k}:sample"] / t[f"speculative:k{k}:sample"]
        out[f"speculative_speedup_k{k}_expert"] = t[f"compose:k{k}"] / t[f"speculative:k{k}:expert"]
    return {name: None if math.isnan(value) else value for name, value in out.items()}


def _f(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def markdown(results: dict) -> str:
    lines = [
        f"Command: `{results['command']}` ({results['threads']} torch thread(s), {results['repeats']} repeats, "
        f"medians; ratios within one interleaved run)",
        "",
    ]
    for models in results["sets"]:
        lines += [f"### {models['name']}: {models['description']}", ""]
        lines += [
            "| prompt, new, batch | base tok/s | K=3 tok/s | overhead K=1/2/3/4 (<= 1.10) | vs naive K=3 (>= 1.4) "
            "| K=3 stacked vs unstacked "
            "| prompted batched (>= 1.8) | K=0 / HF generate (<= 1.0) | speculative K=1/K=3 greedy (>= 2) "
            "| speculative K=3 sampling | speculative K=1/K=3 greedy, one expert drafts "
            "| acceptance K=3 greedy / sampling / one expert | tokens per round and row, K=3 greedy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for cell in models["cells"]:
            case, t, r, acc = cell["case"], cell["tokens_per_s"], cell["ratios"], cell["acceptance"]
            per_round = cell.get("tokens_per_round", {}).get("speculative:k3")
            overhead = "/".join(_f(r[f"overhead_k{k}"]) for k in range(1, MAX_K + 1))
            lines.append(
                f"| {case['prompt']}, {case['new']}, {case['batch']} | {t['single:base']:.0f} | {t['compose:k3']:.0f} "
                f"| {overhead} | {_f(r['naive_speedup_k3'], 'x')} | {_f(r.get('stacking_speedup_k3'), 'x')} "
                f"| {_f(r['prompted_speedup'], 'x')} "
                f"| {_f(r['k0_over_transformers'])} "
                f"| {_f(r['speculative_speedup_k1'], 'x')} / {_f(r['speculative_speedup_k3'], 'x')} "
                f"| {_f(r['speculative_speedup_k3_sample'], 'x')} "
                f"| {_f(r['speculative_speedup_k1_expert'], 'x')} / {_f(r['speculative_speedup_k3_expert'], 'x')} "
                f"| {_f(acc.get('speculative:k3'))} / {_f(acc.get('speculative:k3:sample'))} "
                f"/ {_f(acc.get('speculative:k3:expert'))} | {_f(per_round)} |"
            )
        lines.append("")
    if results["memory"]:
        lines += [
            "### Peak memory (one child process per row)",
            "",
            "| set, K, prompt, new, batch | models in memory / unique | weights MB | KV MB | interpreter MB "
            "| peak RSS MB | limit 1.15 x (weights + KV) + interpreter | growth per step beyond KV |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in results["memory"]:
            c = m["case"]
            limit = 1.15 * (m["weights"] + m["kv_cache"]) + m["interpreter_rss"]
            lines.append(
                f"| {m['set']}, {m['k']}, {c['prompt']}, {c['new']}, {c['batch']} "
                f"| {m['distinct_models']} / {m['unique_specs']} | {m['weights'] / MB:.0f} | {m['kv_cache'] / MB:.1f} "
                f"| {m['interpreter_rss'] / MB:.0f} | {m['peak_rss'] / MB:.0f} | {limit / MB:.0f} "
                f"| {m['growth_per_step_beyond_cache'] / 1024:.0f} KB |"
            )
    return "\n".join(lines) + "\n"
