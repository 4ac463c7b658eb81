"""The variants compared in one interleaved measurement: each is a callable generating a fixed number of tokens."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.models import ModelSet
from benchmarks.naive import naive_generate
from composer import Chat, Composer, DecodingConfig, Member, ModelSpec, Objective
from composer.speculative import Draft
from experts.loading import load
from experts.stream import ModelStream, left_pad

MAX_K = 4
SPECULATIVE_K = (1, 3)
STACKING_K = 3
PROMPTED_FORMATS = 3


@dataclass(frozen=True)
class Case:
    """One measurement cell: prompt length, new tokens, batch size."""

    prompt: int
    new: int
    batch: int

    @property
    def label(self) -> str:
        return f"prompt {self.prompt}, new {self.new}, batch {self.batch}"


def objectives(models: ModelSet, k: int) -> list[Objective]:
    """k objectives sharing the set's anti-expert, weights alternating in sign as a real recipe might."""
    anti = Member(ModelSpec(models.anti))
    return [
        Objective(f"o{i}", Member(ModelSpec(models.experts[i % len(models.experts)])), anti, weight=(-0.5) ** (i % 2))
        for i in range(k)
    ]


def prompts(models: ModelSet, case: Case) -> list[str]:
    """``case.batch`` distinct prompts of ``case.prompt`` tokens each under the base's tokenizer."""
    tokenizer = load(ModelSpec(models.base)).tokenizer
    texts = []
    for row in range(case.batch):
        if models.sample_text:
            text = models.sample_text * (case.prompt // 8 + 2)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][row : row + case.prompt - 1]  # + BOS
        else:
            ids = [len(tokenizer) // 2 + (row * 31 + j * 7) % 500 for j in range(case.prompt)]
        texts.append(tokenizer.decode(ids))
    return texts


def fixed_length(composer: Composer) -> Composer:
    """Benchmarks generate exactly max_new_tokens: no row stops at an end-of-sequence token."""
    composer.eos_ids = set()
    return composer


def composer_runs(models: ModelSet, case: Case, texts: list[str]) -> tuple[dict[str, Callable], dict[str, Draft]]:
    """The composer's loop: single models (K=0, also the overhead reference), K = 1..4, speculative."""
    greedy = DecodingConfig(max_new_tokens=case.new)
    sample = DecodingConfig(max_new_tokens=case.new, do_sample=True, seed=0)
    runs: dict[str, Callable] = {}
    singles = {"base": models.base, "anti": models.anti, **{f"expert{i}": p for i, p in enumerate(models.experts)}}
    for name, path in singles.items():
        runs[f"single:{name}"] = _generate(fixed_length(Composer(path)), texts, greedy)
    drafts: dict[str, Draft] = {}
    for k in range(1, MAX_K + 1):
        composer = fixed_length(Composer(models.base, objectives(models, k)))
        runs[f"compose:k{k}"] = _generate(composer, texts, greedy)
        if k == STACKING_K:
            unstacked = fixed_length(Composer(models.base, objectives(models, k), stack_models=False))
            runs[f"compose:k{k}:unstacked"] = _generate(unstacked, texts, greedy)
        if k in SPECULATIVE_K:
            drafts[f"speculative:k{k}"] = Draft()
            runs[f"speculative:k{k}"] = _generate(composer, texts, greedy, drafts[f"speculative:k{k}"])
            drafts[f"speculative:k{k}:sample"] = Draft()
            runs[f"compose:k{k}:sample"] = _generate(composer, texts, sample)
            runs[f"speculative:k{k}:sample"] = _generate(composer, texts, sample, drafts[f"speculative:k{k}:sample"])
            drafts[f"speculative:k{k}:expert"] = Draft(model=models.experts[0], steer=False)
            runs[f"speculative:k{k}:expert"] = _generate(composer, texts, greedy, drafts[f"speculative:k{k}:expert"])
    return runs, drafts


def _generate(composer: Composer, texts: list[str], config: DecodingConfig, draft: Draft | None = None) -> Callable:
    return lambda: composer.generate(texts, config, draft=draft)


def transformers_run(models: ModelSet, case: Case, texts: list[str]) -> Callable:
    """transformers' own generate() on the base alone, greedy, fixed length."""
    loaded = load(ModelSpec(models.base))
    loaded.tokenizer.padding_side = "left"
    inputs = loaded.tokenizer(texts, return_tensors="pt", padding=True).to(loaded.device)
    config = copy.deepcopy(loaded.model.generation_config)
    config.update(eos_token_id=None, pad_token_id=loaded.tokenizer.pad_token_id, do_sample=False)
    config.max_new_tokens = config.min_new_tokens = case.new
    return lambda: loaded.model.generate(**inputs, generation_config=config)


def naive_runs(models: ModelSet, case: Case, texts: list[str]) -> dict[str, Callable]:
    """The paper-style loop: 2K + 1 forwards per step, one model at a time."""
    base = load(ModelSpec(models.base))
    ids, mask = left_pad([base.tokenizer(t)["input_ids"] for t in texts], base.tokenizer.pad_token_id, base.device)
    runs = {}
    for k in range(1, MAX_K + 1):
        pairs = [(load(o.expert.model).model, load(o.anti.model).model, o.weight) for o in objectives(models, k)]
        runs[f"naive:k{k}"] = lambda pairs=pairs: naive_generate(base.model, pairs, ids, mask, case.new)
    return runs


def prompted_runs(models: ModelSet, case: Case, texts: list[str]) -> dict[str, Callable]:
    """Several Chat system prompts on one expert's weights: one batched stream versus one stream per prompt."""
    expert = load(ModelSpec(models.experts[0]))
    formats = [Chat(system=f"You are assistant number {i}.") for i in range(PROMPTED_FORMATS)]
    rows = [[fmt.render(t, expert.tokenizer) for t in texts] for fmt in formats]

    def batched() -> None:
        stream = ModelStream.of(expert)
        logits = stream.start([r for group in rows for r in group])
        for _ in range(case.new - 1):
            chosen = logits.reshape(PROMPTED_FORMATS, case.batch, -1)[0].argmax(-1, keepdim=True)
            logits = stream.extend(chosen.repeat(PROMPTED_FORMATS, 1))[:, -1]

    def one_by_one() -> None:
        streams = [ModelStream.of(expert) for _ in formats]
        logits = [s.start(r) for s, r in zip(streams, rows, strict=True)]
        for _ in range(case.new - 1):
            chosen = logits[0].argmax(-1, keepdim=True)
            logits = [s.extend(chosen)[:, -1] for s in streams]

    return {
        "prompted:batched": torch.inference_mode()(batched),
        "prompted:one-by-one": torch.inference_mode()(one_by_one),
    }
