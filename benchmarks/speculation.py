"""``python -m benchmarks.speculation``: where a speculative round's time goes, per gamma, on the tiny family.

Speculative composition is faster than plain composition by (tokens per round) x (plain step time) /
(round time). The first factor is the draft's acceptance; the second is the cost model: a round runs the
draft's streams once per drafted token (the small models' own composition: for proxy-tuning they must run at
every generated token anyway), the other streams (the base) once over all drafts, and the bonus position only
when some row accepted every draft. This command measures both factors on the same composer, interleaved:

- tokens/s of plain and speculative decoding for each gamma, and for transformers' "heuristic" gamma schedule
  from ``--heuristic`` (its mean gamma shown), medians of ``--repeats`` timed runs;
- from one more run per variant with ``Session.advance`` timed: milliseconds per round in the draft's
  streams, in the verifying streams, and the rest (the prefill, composition, acceptance tests, Python);
- ``bound``: the speed over plain decoding that this round cost would give if every draft were accepted,
  (gamma + 1) x plain step / round time with the bonus forward every round (the mean gamma for the heuristic).

``--compile`` builds the composer with ``compile=True`` (every step after the prefill through torch.compile,
plain and speculative alike) and times an eager composer's plain decoding beside it, interleaved: the ratios
are then compiled speculative / compiled plain, with both also against eager plain. The first runs, which
compile, are the warm-up. Writes benchmarks/results/speculation.{json,md}, or speculation-compiled.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from benchmarks.cases import Case, fixed_length, objectives, prompts  # noqa: E402
from benchmarks.models import family_set  # noqa: E402
from benchmarks.timing import interleaved  # noqa: E402
from composer import Composer, DecodingConfig  # noqa: E402
from composer.session import Session  # noqa: E402
from composer.speculative import Draft, SpeculationStats  # noqa: E402

RESULTS = Path(__file__).parent / "results"


@contextmanager
def timed_units() -> Iterator[dict[str, float]]:
    """Seconds in ``Session.advance`` for the base's unit ('verify') and the others ('draft', the draft's
    streams), the calls into each, the draft's units, and the tokens drafted (verify widths less one)."""
    spent: dict[str, float] = defaultdict(float)
    original = Session.advance

    def advance(self: Session, unit: int, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
        started = time.perf_counter()
        out = original(self, unit, tokens)
        kind = "verify" if unit == self.unit_of(self.plan.base.group) else "draft"
        spent[kind] += time.perf_counter() - started
        spent[f"{kind} calls"] += 1
        if kind == "verify":
            spent["drafted"] += tokens.shape[1] - 1
        else:
            spent[f"unit {unit}"] = 1
        return out

    Session.advance = advance
    try:
        yield spent
    finally:
        Session.advance = original


def measure(
    composer: Composer,
    texts: list[str],
    new: int,
    gammas: list[int],
    repeats: int,
    eager: Composer | None = None,
    heuristic: int | None = None,
) -> dict:
    """One composer and cell: plain decoding and one draft per gamma (and the heuristic schedule starting at
    ``heuristic``), timed interleaved, then broken down; with ``eager`` (the same composition, not compiled),
    its plain decoding too."""
    config = DecodingConfig(max_new_tokens=new)
    drafts = {f"gamma {gamma}": Draft(gamma=gamma) for gamma in gammas}
    if heuristic:
        drafts["heuristic"] = Draft(gamma=heuristic, gamma_schedule="heuristic")
    runs = {"plain": lambda: composer.generate(texts, config)}
    runs |= {name: lambda d=d: composer.generate(texts, config, draft=d) for name, d in drafts.items()}
    if eager is not None:
        runs["eager plain"] = lambda: eager.generate(texts, config)
    seconds = interleaved(runs, repeats)
    plain_step = seconds["plain"] / new
    rows = []
    for name, draft in drafts.items():
        # the breakdown's run goes on from the timed runs' schedule, with statistics of its own
        schedule = SpeculationStats(planned=draft.stats.planned, all_accepted=draft.stats.all_accepted)
        probe = replace(draft, stats=schedule)
        with timed_units() as spent:
            started = time.perf_counter()
            composer.generate(texts, config, draft=probe)
            total = time.perf_counter() - started
        gamma = probe.stats.mean_gamma  # the breakdown's own rounds (a heuristic schedule's gamma moves)
        rounds, units = spent["verify calls"], sum(1 for key in spent if key.startswith("unit "))
        bonus = (spent["draft calls"] / units - spent["drafted"]) / rounds  # rounds that ran the bonus position
        draft_ms, verify_ms = 1e3 * spent["draft"] / rounds, 1e3 * spent["verify"] / rounds
        rest_ms = 1e3 * total / rounds - draft_ms - verify_ms
        draft_step_ms = 1e3 * spent["draft"] * units / spent["draft calls"]  # one step of all the draft's units
        full_round = (gamma + 1) * draft_step_ms + verify_ms + rest_ms  # gamma drafts and the bonus position
        rows.append(
            {
                "gamma": draft.gamma,
                "schedule": draft.gamma_schedule,
                "mean_gamma": draft.stats.mean_gamma,
                "speedup": seconds["plain"] / seconds[name],
                "tokens_per_s": len(texts) * new / seconds[name],
                "acceptance_rate": draft.stats.acceptance_rate,
                "tokens_per_round": draft.stats.tokens_per_round,
                "rounds": rounds,
                "bonus_fraction": bonus,
                "draft_step_ms": draft_step_ms,
                "draft_ms_per_round": draft_ms,
                "verify_ms_per_round": verify_ms,
                "rest_ms_per_round": rest_ms,
                "bound": (gamma + 1) * 1e3 * plain_step / full_round,
            }
        )
    cell = {"plain_tokens_per_s": len(texts) * new / seconds["plain"], "plain_step_ms": 1e3 * plain_step, "rows": rows}
    if eager is not None:
        cell["eager_plain_tokens_per_s"] = len(texts) * new / seconds["eager plain"]
        for row, name in zip(rows, drafts, strict=True):
            row["speedup_over_eager_plain"] = seconds["eager plain"] / seconds[name]
    return cell


def markdown(results: dict) -> str:
    lines = [f"Command: `{results['command']}` (1 torch thread, medians of {results['repeats']} interleaved runs)", ""]
    for cell in results["cells"]:
        compiled = "eager_plain_tokens_per_s" in cell
        heading = (
            f"#### K={cell['k']}, prompt {cell['prompt']}, new {cell['new']}, batch {cell['batch']}: plain "
            f"{cell['plain_tokens_per_s']:.0f} tok/s, {cell['plain_step_ms']:.1f} ms per step"
        )
        if compiled:
            eager = cell["eager_plain_tokens_per_s"]
            heading += f" (compiled; eager plain {eager:.0f} tok/s, {cell['plain_tokens_per_s'] / eager:.2f}x)"
        lines += [
            heading,
            "",
            "| gamma | speculative / plain | acceptance | tokens per round and row | ms per round: draft streams "
            "/ verifying streams / rest | bound: all drafts accepted |" + (" speculative / eager plain |" * compiled),
            "|---|---|---|---|---|---|" + "---|" * compiled,
        ]
        for row in cell["rows"]:
            gamma = row["gamma"]
            if row["schedule"] == "heuristic":
                gamma = f"heuristic from {gamma} (mean {row['mean_gamma']:.1f})"
            line = (
                f"| {gamma} | {row['speedup']:.2f}x | {row['acceptance_rate']:.2f} "
                f"| {row['tokens_per_round']:.2f} | {row['draft_ms_per_round']:.1f} / "
                f"{row['verify_ms_per_round']:.1f} / {row['rest_ms_per_round']:.1f} | {row['bound']:.2f}x |"
            )
            lines.append(line + (f" {row['speedup_over_eager_plain']:.2f}x |" if compiled else ""))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3], help="objectives sharing the anti-expert")
    parser.add_argument("--cells", nargs="+", default=["64,64,1", "64,64,8"], help="prompt,new,batch")
    parser.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    parser.add_argument("--heuristic", type=int, default=4, help="the heuristic schedule's first gamma (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="compile the composer's steps (torch.compile)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = family_set()
    if models is None:
        sys.exit("error: the tiny family is not trained (python -m experts.family.train)")
    results = {"command": " ".join(["python -m benchmarks.speculation", *sys.argv[1:]]), "repeats": args.repeats}
    results["cells"] = []
    for k in args.ks:
        composer = fixed_length(Composer(models.base, objectives(models, k), compile=args.compile))
        eager = fixed_length(Composer(models.base, objectives(models, k))) if args.compile else None
        for spec in args.cells:
            case = Case(*map(int, spec.split(",")))
            texts = prompts(models, case)
            cell = measure(composer, texts, case.new, args.gammas, args.repeats, eager, args.heuristic)
            results["cells"].append({"k": k, **case.__dict__, **cell})
            print(f"K={k} {case.label} done", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "speculation-compiled" if args.compile else "speculation"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"{name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
