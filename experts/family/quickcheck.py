"""Is the family useful? ``python -m experts.family.quickcheck`` scores base, tuned, expert and proxy.

Greedy decoding of held-out prompts per objective, with a deliberately naive loop (every model recomputed
on its full sequence each step) so the check depends on nothing but transformers; the composer engine
is the real implementation. The base and the anti-expert (tiny-small) read the raw question/answer format
they were pretrained on, the experts and tiny-tuned the chat template; the proxy's next-token logits are
``base + expert - small``. Gap closed = (proxy - base) / (tuned - base) on each objective's score.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from experts.family import BASE, MODELS_DIR, OBJECTIVES, SMALL, TUNED, base_prompt, expert_name
from experts.family.threads import reexec_with_passive_omp_wait
from experts.family.world import GENERATORS

MAX_NEW_TOKENS = 48
SYSTEMS = ("base", "tuned", "expert", "proxy")


@dataclass(frozen=True)
class Member:
    """One model of a (possibly composed) system, with its own rendering of the prompt and its weight."""

    model: PreTrainedModel
    prompt_ids: list[int]
    weight: float = 1.0


def load(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    folder = MODELS_DIR / name
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def chat_ids(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def raw_ids(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return tokenizer(base_prompt(prompt))["input_ids"]


@torch.inference_mode()
def greedy(members: list[Member], eos_id: int) -> list[int]:
    generated: list[int] = []
    for _ in range(MAX_NEW_TOKENS):
        logits = sum(m.weight * m.model(input_ids=torch.tensor([m.prompt_ids + generated])).logits[0, -1]
                     for m in members)
        token = int(logits.argmax())
        if token == eos_id:
            break
        generated.append(token)
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="prompts per objective")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--show", type=int, default=1, help="responses to print per objective and system")
    args = parser.parse_args()
    torch.set_num_threads(2)

    (base, tokenizer), (small, _), (tuned, _) = load(BASE), load(SMALL), load(TUNED)
    rows = []
    for objective in OBJECTIVES:
        expert, _ = load(expert_name(objective))
        generator = GENERATORS[objective]
        examples = generator.generate(args.split, args.n)
        systems = {
            "base": lambda p: [Member(base, raw_ids(p, tokenizer))],
            "tuned": lambda p: [Member(tuned, chat_ids(p, tokenizer))],
            "expert": lambda p, e=expert: [Member(e, chat_ids(p, tokenizer))],
            "proxy": lambda p, e=expert: [Member(base, raw_ids(p, tokenizer)), Member(e, chat_ids(p, tokenizer)),
                                          Member(small, raw_ids(p, tokenizer), weight=-1.0)],
        }
        metrics = {}
        for system, members_for in systems.items():
            responses = [tokenizer.decode(greedy(members_for(e.prompt), tokenizer.eos_token_id),
                                          skip_special_tokens=True) for e in examples]
            metrics[system] = generator.score(examples, responses)
            for example, response in list(zip(examples, responses, strict=True))[: args.show]:
                print(f"[{objective}/{system}] {example.prompt!r}\n  -> {response!r}")
        rows.append((objective, metrics))

    print(f"\n{args.split} split, {args.n} prompts per objective, greedy")
    print(f"{'objective':<9} " + " ".join(f"{s:>7}" for s in SYSTEMS) + "  gap closed")
    closed = []
    for objective, metrics in rows:
        gap = metrics["tuned"]["score"] - metrics["base"]["score"]
        fraction = (metrics["proxy"]["score"] - metrics["base"]["score"]) / gap if gap else float("nan")
        closed.append(fraction)
        print(f"{objective:<9} " + " ".join(f"{metrics[s]['score']:>7.3f}" for s in SYSTEMS) + f"  {fraction:>9.1%}")
        for system in SYSTEMS:
            details = {k: round(v, 3) for k, v in metrics[system].items() if k != "score"}
            print(f"  {system:<7} {details}")
    print(f"mean gap closed: {sum(closed) / len(closed):.1%}")


if __name__ == "__main__":
    reexec_with_passive_omp_wait("experts.family.quickcheck")
    main()
