"""Tiny, deterministic models and a tokenizer built from configs, so no test needs a download."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

WORDS = (  # noqa: SIM905 - a sentence of words reads better than a column of strings
    "the a cat dog sat on mat and ran to park is safe code print def return if else x y z 1 2 3 4 5 "
    "hello world question answer yes no please help me write function add two numbers"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a chat template; pass another word order for a foreign vocabulary."""
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2's kind of tokenizer: SentencePiece pieces with a leading-space marker, a byte piece (<0x0A>) for
    anything else, decoded run by run (ByteFallback) with the first leading space stripped."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    pieces += ["\u2581", "a", "b", "\u2581a", "\u2581b", "ab", "\u2581ab", ".", "\u2581.", "\u00e9", "\u2581foo", "o"]
    core = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, [], unk_token="<unk>", byte_fallback=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    core.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def build_model(
    folder: Path,
    seed: int,
    tokenizer: PreTrainedTokenizerFast,
    vocab_size: int | None = None,
    layers: int = 2,
    hidden: int = 32,
    max_positions: int = 128,
) -> Path:
    """A randomly initialised Llama saved with its tokenizer; same seed, same weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so that models disagree visibly
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_sliding_window_family(folder: Path, window: int = 4) -> dict[str, str]:
    """Mistral models attending to the last ``window`` tokens (float64): an expert, an anti-expert, and a base
    that is the anti-expert with a little noise, so that its drafts are accepted often but not always."""
    tokenizer = build_tokenizer()
    paths = {}
    for name, seed in [("expert", 1), ("anti", 2), ("base", 2)]:
        torch.manual_seed(seed)
        config = MistralConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, sliding_window=window, max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=None,
        )  # fmt: skip
        model = MistralForCausalLM(config).double()
        with torch.no_grad():
            model.lm_head.weight.mul_(20.0)
            if name == "base":
                generator = torch.Generator().manual_seed(7)
                for param in model.parameters():
                    param.add_(0.03 * param.std() * torch.randn(param.shape, generator=generator, dtype=param.dtype))
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths[name] = str(folder / name)
    return paths
