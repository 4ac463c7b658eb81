"""The Composer as an lm-evaluation-harness model, registered as ``proxy-composer``.

Unlike ``HFLM`` over ``ComposedForCausalLM``, this adapter knows where the context ends, so every member
sees its own prompt format (chat experts get their template) and schedules count continuation tokens.
Import this module before ``lm_eval.simple_evaluate`` (lm-eval 0.4 has no entry-point plug-ins).
"""

from __future__ import annotations

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from composer.decoding import DecodingConfig
from composer.engine import Composer


@register_model("proxy-composer")
class ComposerLM(LM):
    def __init__(self, composer: Composer, batch_size: int = 8, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.composer = composer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for batch in _batches(requests, self.batch_size, disable_tqdm):
            contexts, continuations = zip(*(r.args for r in batch), strict=True)
            scores = self.composer.score([c or self._start() for c in contexts], list(continuations))
            results += [(s.logprob, s.is_greedy) for s in scores]
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood, conditioned on the tokenizer's start token."""
        pairs = [Instance("loglikelihood", r.doc, (self._start(), r.args[0]), r.idx) for r in requests]
        return [logprob for logprob, _ in self.loglikelihood(pairs, disable_tqdm)]

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Requests that share generation settings run as batches, results in request order."""
        results: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for indices in groups.values():
            config = self._decoding(requests[indices[0]].args[1])
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                completions = self.composer.generate([requests[i].args[0] for i in chunk], config)
                for i, completion in zip(chunk, completions, strict=True):
                    results[i] = completion.text
                bar.update(len(chunk))
        bar.close()
        return results

    def _decoding(self, kwargs: dict) -> DecodingConfig:
        until = kwargs.get("until") or []
        return DecodingConfig(
            max_new_tokens=kwargs.get("max_gen_toks", self.max_gen_toks),
            do_sample=bool(kwargs.get("do_sample", False)),
            temperature=kwargs.get("temperature") or 1.0,
            stop=tuple([until] if isinstance(until, str) else until),
        )

    def _start(self) -> str:
        tokenizer = self.composer.tokenizer
        return tokenizer.bos_token or tokenizer.eos_token


def _batches(requests: list[Instance], size: int, disable_tqdm: bool) -> list[list[Instance]]:
    batches = [requests[i : i + size] for i in range(0, len(requests), size)]
    return list(tqdm(batches, disable=disable_tqdm, desc="loglikelihood"))
