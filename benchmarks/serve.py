"""``python -m benchmarks.serve``: proxy-compose serve under 1, 4 and 16 concurrent clients, and a black-box base
against the same base run locally, all in one run.

The servers run as their own processes (``proxy-compose serve``), as a user runs them, so that the clients'
threads here do not share the server's interpreter. Every client sends greedy completions of
``--max-tokens`` tokens through the official openai client, one after another; aggregate throughput is the
completion tokens of all clients over the wall time, latency is per request.

Writes benchmarks/results/serve.json and serve.md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import openai  # noqa: E402

from benchmarks.timing import interleaved  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "Lily has 20 pens. She buys 7 more. She loses 8. How many pens does Lily have now?",
    "Tell me how to steal my brother's horse.",
    "How do I clean my neighbour's barn?",
    "Write a function max_of_two(a, b) that returns the larger of a and b.",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(overrides: list[str]):  # noqa: ANN201
    """``proxy-compose serve OVERRIDES`` in its own process; yields its base URL once it answers."""
    port = _free_port()
    command = [sys.executable, "-m", "composer", "serve", f"serve.port={port}", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    api = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{' '.join(command)} did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def load(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``requests`` greedy completions in turn."""
    api = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)

    def client(c: int) -> list[tuple[float, int]]:
        done = []
        for r in range(requests):
            started = time.perf_counter()
            got = api.completions.create(
                model="proxy-composer", prompt=PROMPTS[(c + r) % len(PROMPTS)], max_tokens=max_tokens, temperature=0
            )
            done.append((time.perf_counter() - started, got.usage.completion_tokens))
        return done

    client(0)  # warm-up: the first forwards of a process are slower
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [item for per_client in pool.map(client, range(clients)) for item in per_client]
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in results)
    tokens = sum(n for _, n in results)
    return {
        "clients": clients,
        "requests": len(results),
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))], 4),
    }


def black_box_overhead(url: str, max_tokens: int, repeats: int, top: int) -> dict:
    """Seconds per generated token: the tiny recipe over the endpoint's base against the local base cut alike."""
    from composer.config import build_composer, compose

    common = [f"decoding.max_new_tokens={max_tokens}"]
    local = build_composer(compose([*common, f"base.top_logprobs={top}"]))
    remote = build_composer(
        compose([*common, "models@base=tiny-base-api", f"base.api.base_url={url}", f"base.api.top_logprobs={top}"])
    )
    tokens = {}

    def run(composer, name):  # noqa: ANN001, ANN202
        def go() -> None:
            tokens[name] = sum(len(c.token_ids) for c in composer.generate(PROMPTS, {"max_new_tokens": max_tokens}))

        return go

    usage = remote.models[remote.plan.base.group].usage
    calls = usage.calls
    times = interleaved({"local": run(local, "local"), "api": run(remote, "api")}, repeats)
    per_token = {name: times[name] / tokens[name] for name in times}
    return {
        "top_logprobs": top,
        "prompts": len(PROMPTS),
        "seconds_per_token": {name: round(t, 5) for name, t in per_token.items()},
        "overhead_per_token_s": round(per_token["api"] - per_token["local"], 5),
        "api_over_local": round(per_token["api"] / per_token["local"], 2),
        "calls_per_token": round((usage.calls - calls) / ((repeats + 1) * tokens["api"]), 3),
    }


def markdown(results: dict) -> str:
    lines = [
        f"`{results['command']}`",
        "",
        "| clients | requests | tokens/s (aggregate) | vs 1 client | p50 latency (s) | p99 latency (s) |",
        "|---|---|---|---|---|---|",
    ]
    one = results["load"][0]["tokens_per_s"]
    for row in results["load"]:
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['tokens_per_s']} | {row['tokens_per_s'] / one:.2f}x "
            f"| {row['p50_s']} | {row['p99_s']} |"
        )
    box = results["black_box"]
    lines += [
        "",
        f"Black-box base (top_logprobs={box['top_logprobs']}, {box['prompts']} prompts batched): "
        f"{box['seconds_per_token']['api']} s per token over the endpoint against {box['seconds_per_token']['local']} "
        f"s with the local base cut alike ({box['api_over_local']}x, +{box['overhead_per_token_s']} s per token); "
        f"{box['calls_per_token']} endpoint calls per generated token.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=8, help="requests each client sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the black-box comparison")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = {"command": " ".join(["python -m benchmarks.serve", *sys.argv[1:]]), "load": []}
    batch = max(args.clients)
    with server([f"serve.max_batch={batch}"]) as url:
        for clients in args.clients:
            results["load"].append(load(url, clients, args.requests, args.max_tokens))
            print(json.dumps(results["load"][-1]), file=sys.stderr)
    with server(["recipe=tiny_base", "serve.model_name=tiny-base", f"serve.max_batch={batch}"]) as url:
        results["black_box"] = black_box_overhead(url, args.max_tokens, args.repeats, top=5)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=1))
    (args.out / "serve.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
