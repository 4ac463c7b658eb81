"""Benchmark inputs: random-initialised Llama models of stated sizes, and the project's tiny family when trained.

Random models are built from configs once into a cache folder (no hub), sharing a synthetic word-level
tokenizer in which every word is one token, so prompt lengths are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CACHE = Path(os.environ.get("COMPOSER_BENCH_CACHE", Path.home() / ".cache" / "proxy-composer-bench"))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class Shape:
    """A Llama shape. Unset, the MLP is 4x the hidden size and every head (keys and values too) is 64 wide."""

    hidden: int
    layers: int
    vocab: int
    tied: bool = False
    intermediate: int | None = None
    heads: int | None = None
    kv_heads: int | None = None

    def config(self, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
        heads = self.heads or max(1, self.hidden // 64)
        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate or 4 * self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=heads,
            num_key_value_heads=self.kv_heads or heads,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=None,  # fixed-length generations: no row ever stops early
            tie_word_embeddings=self.tied,
        )


@dataclass(frozen=True)
class ModelSet:
    """One base and the small models that steer it: experts[k] pairs with the shared anti-expert."""

    name: str
    base: str
    anti: str
    experts: tuple[str, ...]
    description: str
    sample_text: str = ""  # prompts are cut from it; empty for the synthetic tokenizer (one word, one token)


RANDOM_SETS = {
    # ~10M base, ~1.2M experts (base ~9x an expert)
    "random-10m": (Shape(hidden=256, layers=6, vocab=8192), Shape(hidden=64, layers=2, vocab=8192)),
    # GPT-2-small-shaped base (768 x 12, tied embeddings), experts of ~5M
    "random-100m": (Shape(hidden=768, layers=12, vocab=32000, tied=True), Shape(hidden=128, layers=2, vocab=32000)),
}


def synthetic_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    words = [f"w{i}" for i in range(vocab - len(SPECIALS))]
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate([*SPECIALS, *words])}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _build(folder: Path, shape: Shape, seed: int, tokenizer: PreTrainedTokenizerFast) -> str:
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        LlamaForCausalLM(shape.config(tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def random_set(name: str, experts: int = 4) -> ModelSet:
    base_shape, small_shape = RANDOM_SETS[name]
    tokenizer = synthetic_tokenizer(base_shape.vocab)
    root = CACHE / name
    base = _build(root / "base", base_shape, 0, tokenizer)
    anti = _build(root / "anti", small_shape, 1, tokenizer)
    paths = tuple(_build(root / f"expert{k}", small_shape, 2 + k, tokenizer) for k in range(experts))
    description = f"random Llama: base {_count(base) / 1e6:.1f}M, experts {_count(anti) / 1e6:.1f}M"
    return ModelSet(name, base, anti, paths, description)


def family_set() -> ModelSet | None:
    """The trained tiny family (experts/family/models), or None while it is not there yet."""
    from experts.family import BASE, MODELS_DIR, OBJECTIVES, SMALL, expert_name

    paths = [MODELS_DIR / n for n in (BASE, SMALL, *map(expert_name, OBJECTIVES))]
    if not all((p / "config.json").exists() for p in paths):
        return None
    base, anti, *experts = map(str, paths)
    description = f"tiny family: base {_count(base) / 1e6:.1f}M, experts {_count(anti) / 1e6:.1f}M"
    text = "Question: a farmer has three boxes of seven apples; how many apples are there?\nAnswer:\n"
    return ModelSet("family", base, anti, tuple(experts), description, sample_text=text)


def _count(path: str) -> int:
    config = LlamaConfig.from_pretrained(path)
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())
