"""Regenerate the family deterministically: ``python -m experts.family.train``.

Writes the shared tokenizer and every model under ``experts/family/models/<name>/`` (bfloat16 safetensors,
each folder loadable alone) and ``models/training.json`` with sizes, final losses and wall times.
Fine-tuning starts from the saved pretrained weights, so ``--reuse-pretrained`` (keep tiny-base and
tiny-small when their folders exist, e.g. after an interrupted run) gives the same models as a full run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from experts.family import BASE, MODELS_DIR, OBJECTIVES, SMALL, TUNED, expert_name
from experts.family.corpus import instruction_pairs, raw_corpus
from experts.family.threads import reexec_with_passive_omp_wait
from experts.family.tokenizer import VOCAB_SIZE, train_tokenizer

SEED = 0
BLOCK = 128
IGNORE = -100
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    steps: int
    batch_size: int
    lr: float


BASE_SHAPE = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 688}
SMALL_SHAPE = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}
PRETRAIN = {BASE: Schedule(steps=800, batch_size=32, lr=2.5e-3), SMALL: Schedule(steps=800, batch_size=32, lr=3e-3)}
TUNE_TUNED = Schedule(steps=400, batch_size=32, lr=1e-3)
TUNE_EXPERT = Schedule(steps=600, batch_size=32, lr=2e-3)
# An expert sees its own objective four times as often as each other one. A pure specialist emits confident
# noise on other objectives' prompts, and summed into a multi-objective composition that noise swamps the
# specialist that matters; like real chat or code experts, ours are generalists with a speciality.
OWN_SHARE = 4


def make_deterministic() -> None:
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def new_model(shape: dict[str, int], tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=2 * BLOCK,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    return LlamaForCausalLM(config)


def packed_blocks(documents: list[str], tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Documents as BOS ... EOS, concatenated and cut into blocks of ``BLOCK`` tokens."""
    stream = [token for doc in documents for token in [*tokenizer(doc)["input_ids"], tokenizer.eos_token_id]]
    usable = len(stream) // BLOCK * BLOCK
    return torch.tensor(stream[:usable]).view(-1, BLOCK)


def pretrain_batches(blocks: torch.Tensor, batch_size: int) -> Callable[[torch.Generator], Batch]:
    def sample(generator: torch.Generator) -> Batch:
        rows = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        return rows, torch.ones_like(rows), rows

    return sample


def chat_example(prompt: str, answer: str, tokenizer: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """Token ids of one chat turn and labels that train only on the answer and its EOS."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer_ids = [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def instruction_batches(
    pools: list[list[tuple[list[int], list[int]]]], batch_size: int, pad_id: int
) -> Callable[[torch.Generator], Batch]:
    """Right-padded batches drawing each row's objective uniformly, so small objectives weigh as much."""

    def sample(generator: torch.Generator) -> Batch:
        rows = []
        for pool_index in torch.randint(len(pools), (batch_size,), generator=generator).tolist():
            pool = pools[pool_index]
            rows.append(pool[int(torch.randint(len(pool), (1,), generator=generator))])
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((batch_size, width), pad_id)
        labels = torch.full((batch_size, width), IGNORE)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (ids, row_labels) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(row_labels)
            mask[row, : len(ids)] = 1
        return input_ids, mask, labels

    return sample


def train(model: LlamaForCausalLM, batches: Callable[[torch.Generator], Batch], schedule: Schedule,
          name: str) -> float:
    """AdamW with linear warmup and cosine decay to 10%; returns the mean loss of the last 20 steps."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(schedule.steps // 20, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(schedule.steps - warmup, 1)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    losses = []
    progress = tqdm(range(schedule.steps), desc=name, mininterval=5)
    for _ in progress:
        input_ids, mask, labels = batches(generator)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return sum(losses[-20:]) / len(losses[-20:])


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, name: str) -> None:
    folder = MODELS_DIR / name
    shutil.rmtree(folder, ignore_errors=True)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_saved(name: str) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(MODELS_DIR / name, dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the tiny family's tokenizer and models.")
    parser.add_argument("--reuse-pretrained", action="store_true",
                        help="keep tiny-base and tiny-small (and their tokenizer) when their folders exist")
    args = parser.parse_args()
    started = time.time()
    make_deterministic()
    documents = raw_corpus(SEED)
    pairs = {objective: instruction_pairs(objective, SEED) for objective in OBJECTIVES}
    reused = [name for name in (BASE, SMALL) if args.reuse_pretrained and (MODELS_DIR / name).exists()]
    if reused:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(MODELS_DIR / reused[0])
        for flag in ("is_local", "local_files_only"):  # recorded by loading; a full run's tokenizer has neither
            tokenizer.init_kwargs.pop(flag, None)
    else:
        texts = documents + [f"{p}\n{a}" for objective in OBJECTIVES for p, a in pairs[objective]]
        tokenizer = train_tokenizer(texts)
    blocks = packed_blocks(documents, tokenizer)
    chats = {objective: [chat_example(p, a, tokenizer) for p, a in pairs[objective]] for objective in OBJECTIVES}
    record: dict[str, dict[str, float]] = {}

    def finish(model: LlamaForCausalLM, name: str, loss: float, stage_started: float) -> None:
        save(model, tokenizer, name)
        record[name] = {"parameters": model.num_parameters(), "final_loss": round(loss, 4),
                        "seconds": round(time.time() - stage_started, 1)}

    for name, shape in ((BASE, BASE_SHAPE), (SMALL, SMALL_SHAPE)):
        if name in reused:
            record[name] = {"parameters": load_saved(name).num_parameters(), "reused": True}
            continue
        stage_started = time.time()
        model = new_model(shape, tokenizer)
        schedule = PRETRAIN[name]
        finish(model, name, train(model, pretrain_batches(blocks, schedule.batch_size), schedule, name),
               stage_started)

    stage_started = time.time()
    tuned = load_saved(BASE)
    all_chats = instruction_batches(list(chats.values()), TUNE_TUNED.batch_size, tokenizer.pad_token_id)
    finish(tuned, TUNED, train(tuned, all_chats, TUNE_TUNED, TUNED), stage_started)

    for objective in OBJECTIVES:
        stage_started = time.time()
        expert = load_saved(SMALL)
        pools = [chats[objective]] * OWN_SHARE + [chats[other] for other in OBJECTIVES if other != objective]
        batches = instruction_batches(pools, TUNE_EXPERT.batch_size, tokenizer.pad_token_id)
        finish(expert, expert_name(objective), train(expert, batches, TUNE_EXPERT, expert_name(objective)),
               stage_started)

    summary = {"seed": SEED, "raw_tokens": blocks.numel(), "wall_seconds": round(time.time() - started, 1),
               "models": record}
    (MODELS_DIR / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    reexec_with_passive_omp_wait("experts.family.train")
    main()
