"""A black-box base: the tiny family's base served alone by our own server is the endpoint; composed over it,
greedy output equals the local base cut to the same top_logprobs, token for token, for 1 to 3 objectives."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from fastapi import Response

from composer import Composer, DecodingConfig, Member, ModelSpec, Objective
from composer.config import build_composer, compose
from composer.runner import run_job
from experts.api import ApiSpec
from experts.errors import UserInputError
from experts.family import MODELS_DIR
from experts.prompts import Chat, Template
from experts.tokens import TokenTable
from tests.serving import serving

TEMPLATE = Template("Question: {prompt}\nAnswer:\n")
PROMPTS = [
    "Lily has 20 pens. She buys 7 more. She loses 8. How many pens does Lily have now?",
    "Tell me how to steal my brother's horse.",
    "Write a function max_of_two(a, b) that returns the larger of a and b.",
]
BASE = str(MODELS_DIR / "tiny-base")


def _objectives(count: int) -> list[Objective]:
    anti = Member(ModelSpec(str(MODELS_DIR / "tiny-small"), dtype="float64"), TEMPLATE)
    names = ["math", "safety", "code"][:count]
    return [
        Objective(name, Member(ModelSpec(str(MODELS_DIR / f"tiny-expert-{name}"), dtype="float64"), Chat()), anti, 0.5)
        for name in names
    ]


@pytest.fixture(scope="module")
def endpoint():
    """The base alone, raw (the client formats prompts), in float64 so that cached and uncached forwards agree."""
    with serving(Composer(ModelSpec(BASE, dtype="float64")), max_logprobs=20) as (url, _):
        yield url


@pytest.mark.parametrize("count", [1, 2, 3])
def test_greedy_over_the_endpoint_equals_the_local_top_k_base(endpoint, count):
    config = DecodingConfig(max_new_tokens=10)
    local = Composer(Member(ModelSpec(BASE, dtype="float64", top_logprobs=4), TEMPLATE), _objectives(count))
    api = ApiSpec(endpoint, "proxy-composer", BASE, top_logprobs=4, prompt_as="ids")
    remote = Composer(Member(api, TEMPLATE), _objectives(count))
    expected = local.generate(PROMPTS, config)
    usage = remote.models[remote.plan.base.group].usage  # the model's, over every composer that loads its spec
    before = usage.calls
    got = remote.generate(PROMPTS, config)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert usage.calls - before == sum(len(c.token_ids) for c in got)  # a request per row and generated token
    unsteered = Composer(ModelSpec(BASE, dtype="float64")).generate(PROMPTS, config)
    assert any(a.token_ids != b.token_ids for a, b in zip(expected, unsteered, strict=True))  # steering did act


def test_text_prompts_agree_where_the_text_tokenises_back(endpoint):
    config = DecodingConfig(max_new_tokens=10)
    local = Composer(Member(ModelSpec(BASE, dtype="float64", top_logprobs=4), TEMPLATE), _objectives(1))
    remote = Composer(Member(ApiSpec(endpoint, "proxy-composer", BASE, top_logprobs=4), TEMPLATE), _objectives(1))
    assert [c.text for c in remote.generate(PROMPTS, config)] == [c.text for c in local.generate(PROMPTS, config)]


def test_the_top_k_cut_keeps_k_log_probs_and_masks_the_rest():
    composer = Composer(ModelSpec(BASE, dtype="float64", top_logprobs=3))
    composed = composer.session(["Question: hi\nAnswer:\n"]).start()
    support = torch.isfinite(composed.logits[0, -1])
    assert int(support.sum()) == 3
    assert float(composed.logits[0, -1][support].exp().sum()) < 1  # log-probs of the whole vocabulary, not renormed


def test_a_recipe_runs_over_an_endpoint_and_reports_its_calls(endpoint, tmp_path):
    overrides = [
        "models@base=tiny-base-api", f"base.api.base_url={endpoint}", "base.api.model=proxy-composer",
        "~objectives.code", "~objectives.math", "decoding.max_new_tokens=6", f"output={tmp_path / 'out.jsonl'}",
    ]  # fmt: skip
    cfg = compose(overrides)
    summary = run_job(cfg, tmp_path, overrides)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["text"] for r in records)
    (asked,) = summary["api"].values()
    assert asked["calls_per_token"] == 1.0  # one request per generated token
    assert asked["prompt_tokens_per_token"] > 10
    assert "api_key" not in json.dumps(summary)
    assert build_composer(cfg).explain().count("#proxy-composer") == 1


def test_faults_are_retried_then_one_line_and_the_key_never_shows(monkeypatch):
    failures = {"left": 2}

    def flaky(app):  # noqa: ANN001, ANN202
        @app.middleware("http")
        async def unavailable(request, call_next):  # noqa: ANN001, ANN202
            if failures["left"] > 0:
                failures["left"] -= 1
                return Response(status_code=503)
            return await call_next(request)

    with serving(Composer(ModelSpec(BASE)), before=flaky, api_key="sk-secret-key") as (url, _):
        monkeypatch.setenv("TINY_KEY", "sk-secret-key")
        steady = Composer(ApiSpec(url, "proxy-composer", BASE, top_logprobs=2, api_key_env="TINY_KEY", tries=3))
        assert steady.generate("Question: hi\nAnswer:\n", {"max_new_tokens": 2})[0].token_ids
        failures["left"] = 5
        impatient = ApiSpec(url, "proxy-composer", BASE, top_logprobs=2, api_key_env="TINY_KEY", tries=2)
        with pytest.raises(UserInputError, match="failed after 2 tries.*resume=true"):
            Composer(impatient).generate("Question: hi\nAnswer:\n", {"max_new_tokens": 2})
        failures["left"] = 0
        monkeypatch.setenv("WRONG_KEY", "sk-wrong-key-123")
        wrong = ApiSpec(url, "proxy-composer", BASE, top_logprobs=2, api_key_env="WRONG_KEY", tries=1)
        with pytest.raises(UserInputError) as caught:
            Composer(wrong).generate("Question: hi\nAnswer:\n", {"max_new_tokens": 2})
        assert "sk-wrong-key-123" not in str(caught.value) and "401" in str(caught.value)


def test_a_missing_key_variable_is_one_line():
    os.environ.pop("NO_SUCH_KEY_VAR", None)
    with pytest.raises(UserInputError, match="NO_SUCH_KEY_VAR is unset"):
        Composer(ApiSpec("http://127.0.0.1:9/v1", "m", BASE, api_key_env="NO_SUCH_KEY_VAR"))


def test_token_strings_map_exactly_or_by_the_documented_rule():
    from transformers import AutoTokenizer

    table = TokenTable(AutoTokenizer.from_pretrained(BASE))
    assert all(table.id_of(table.string(i)) == i for i in range(len(table.bytes)))
    assert table.string(100).startswith("bytes:\\x")  # a lone byte of a multi-byte character
    assert table.id_of("token_id:438") == 438
    lily = table.id_of(" Lily")
    assert table.id_of(" Lilyzzq") == lily  # another tokenizer's string: our first token of its text
    with pytest.raises(UserInputError, match="no token of tokenizer"):
        table.id_of("")


def test_scoring_speculation_and_lm_eval_run_over_the_endpoint(endpoint):
    from lm_eval.api.instance import Instance

    from composer.evaluation.lm_eval_model import ComposerLM
    from composer.speculative import Draft

    config = DecodingConfig(max_new_tokens=8)
    local = Composer(Member(ModelSpec(BASE, dtype="float64", top_logprobs=4), TEMPLATE), _objectives(2))
    remote = Composer(Member(ApiSpec(endpoint, "proxy-composer", BASE, top_logprobs=4, prompt_as="ids"), TEMPLATE),
                      _objectives(2))  # fmt: skip
    plain = local.generate(PROMPTS, config)
    answers = [c.text for c in plain]
    expected = [s.logprob for s in local.score(PROMPTS, answers)]
    assert [s.logprob for s in remote.score(PROMPTS, answers)] == pytest.approx(expected, abs=1e-6)
    assert remote.score(PROMPTS[0], " zebra xylophone")[0].logprob == float("-inf")  # off the top-k support
    drafted = remote.generate(PROMPTS, config, draft=Draft(gamma=3))
    assert [c.token_ids for c in drafted] == [c.token_ids for c in plain]
    lm = ComposerLM(remote)
    request = Instance("generate_until", {}, (PROMPTS[1], {"until": ["\n"], "max_gen_toks": 8}), 0)
    [text] = lm.generate_until([request], disable_tqdm=True)
    assert text == local.generate(PROMPTS[1], {"max_new_tokens": 8, "stop": ["\n"]})[0].text


def test_strings_of_another_tokenizer_share_the_token_they_fall_on():
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from experts.api import ApiModel

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    answer = SimpleNamespace(top_logprobs=[{" Lily": -1.0, " Lilyzzq": -1.0, " has": -2.0}])
    reply = SimpleNamespace(usage=None, choices=[SimpleNamespace(logprobs=answer)])
    stub = SimpleNamespace(completions=SimpleNamespace(create=lambda **_: reply))
    model = ApiModel(ApiSpec("http://stub/v1", "m", BASE, top_logprobs=3), tokenizer, stub, TokenTable(tokenizer))
    scores = model.next_token_logprobs([[0, 5]])[0]
    lily, has = TokenTable(tokenizer).id_of(" Lily"), TokenTable(tokenizer).id_of(" has")
    assert float(scores[lily]) == pytest.approx(math.log(2 * math.exp(-1.0)))
    assert float(scores[has]) == -2.0
    assert int(torch.isfinite(scores).sum()) == 2


def test_a_run_stopped_by_the_endpoint_keeps_its_records_and_resumes(tmp_path):
    answered = {"left": 7}  # a request per generated token, three per prompt: the third prompt fails

    def dying(app):  # noqa: ANN001, ANN202
        @app.middleware("http")
        async def down(request, call_next):  # noqa: ANN001, ANN202
            if request.url.path.endswith("/completions"):
                if answered["left"] <= 0:
                    return Response(status_code=503)
                answered["left"] -= 1
            return await call_next(request)

    with serving(Composer(ModelSpec(BASE)), before=dying, model_name="tiny-base") as (url, _):
        output = tmp_path / "out.jsonl"
        overrides = [
            "models@base=tiny-base-api", f"base.api.base_url={url}", "base.api.tries=1", "~objectives.code",
            "~objectives.math", "decoding.max_new_tokens=3", "batch_size=1", f"output={output}",
            'prompts=["Who are you?","How do I clean my barn?","Tell me a story.","What is 2 + 2?"]',
        ]  # fmt: skip
        with pytest.raises(UserInputError, match="failed after 1 try.*resume=true"):
            run_job(compose(overrides), tmp_path, overrides)
        assert len(output.read_text().splitlines()) == 2
        answered["left"] = 1000
        summary = run_job(compose([*overrides, "resume=true"]), tmp_path, overrides)
        assert summary["records"] == 4 and len(output.read_text().splitlines()) == 4


def test_rows_over_the_endpoint_join_mid_flight(endpoint):
    from composer.running import RunningBatch
    from experts.prompts import Raw

    remote = Composer(Member(ApiSpec(endpoint, "proxy-composer", BASE, top_logprobs=4, prompt_as="ids"), TEMPLATE),
                      _objectives(1))  # fmt: skip
    config = DecodingConfig(max_new_tokens=6)
    alone = [c.token_ids for c in remote.generate(PROMPTS, config)]
    batch, done = RunningBatch(remote), {}
    for step in range(12):
        if step < len(PROMPTS):  # one more prompt joins at each of the first steps
            batch.join([step], [PROMPTS[step]], [config], [{}], [Raw().render(PROMPTS[step], remote.tokenizer)])
        done |= {row.tag: row.tokens for row in batch.step(lambda row, _: True)} if batch.live else {}
    assert [done[i] for i in range(len(PROMPTS))] == alone
