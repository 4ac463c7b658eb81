"""Other architectures than Llama compose exactly: batched, cached, stacked and speculative decoding give the
uncached float64 reference's greedy tokens (GPT-2's learned positions, NeoX's partial rotary, Falcon, OPT's
offset positions, Gemma's scaled embeddings, Gemma 3's sliding-window layers, Qwen 3's norms, ...)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as hf

from composer import Composer, DecodingConfig, Member, ModelSpec, Objective
from composer.speculative import Draft
from tests.reference import reference_decode
from tests.tiny_models import build_tokenizer

WIDE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
LLAMA_LIKE = {**WIDE, "intermediate_size": 64, "num_key_value_heads": 2, "max_position_embeddings": 128}
ARCHITECTURES = {
    "gpt2": (hf.GPT2Config, hf.GPT2LMHeadModel, {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}),
    "qwen3": (hf.Qwen3Config, hf.Qwen3ForCausalLM, {**LLAMA_LIKE, "head_dim": 8}),
    "phi3": (hf.Phi3Config, hf.Phi3ForCausalLM, LLAMA_LIKE),
    "gpt_neox": (hf.GPTNeoXConfig, hf.GPTNeoXForCausalLM, {**WIDE, "intermediate_size": 64, "rotary_pct": 0.5}),
    "falcon": (hf.FalconConfig, hf.FalconForCausalLM, WIDE),
    "opt": (hf.OPTConfig, hf.OPTForCausalLM, {**WIDE, "ffn_dim": 64, "word_embed_proj_dim": 32}),
    "gemma": (hf.GemmaConfig, hf.GemmaForCausalLM, {**LLAMA_LIKE, "head_dim": 8}),
    "gemma3": (
        hf.Gemma3TextConfig,
        hf.Gemma3ForCausalLM,
        {**LLAMA_LIKE, "head_dim": 8, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
    ),
}
PROMPTS = ["hello", "the cat sat on the mat and ran to the park", "write a function add two numbers please"]


def build(folder: Path, architecture: str) -> dict[str, str]:
    """A base, an expert and an anti-expert of one architecture, with weights large enough to disagree."""
    config_class, model_class, shape = ARCHITECTURES[architecture]
    tokenizer = build_tokenizer()
    paths = {}
    for role, seed in [("base", 1), ("expert", 2), ("anti", 3)]:
        torch.manual_seed(seed)
        config = config_class(
            **shape, vocab_size=len(tokenizer), initializer_range=0.3, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=None,
        )  # fmt: skip
        model_class(config).save_pretrained(folder / role)
        tokenizer.save_pretrained(folder / role)
        paths[role] = str(folder / role)
    return paths


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_an_architecture_composes_as_the_uncached_reference(tmp_path: Path, architecture: str):
    paths = build(tmp_path, architecture)
    spec = {role: ModelSpec(path, dtype="float64") for role, path in paths.items()}
    objective = Objective("o", Member(spec["expert"]), Member(spec["anti"]), weight=0.7)
    config = DecodingConfig(max_new_tokens=8)
    composer = Composer(spec["base"], [objective])
    batched = [c.token_ids for c in composer.generate(PROMPTS, config)]
    eos = composer.tokenizer.eos_token_id  # the composer stops there; the reference decodes on
    expected = [_until(reference_decode(paths["base"], [objective], p, 8)[0], eos) for p in PROMPTS]
    assert batched == expected
    assert [c.token_ids for c in composer.generate(PROMPTS, config, draft=Draft(gamma=3))] == expected
    alone = Composer(spec["base"], [objective], stack_models=False)
    assert [c.token_ids for c in alone.generate(PROMPTS, config)] == expected


def _until(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
