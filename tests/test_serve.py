"""proxy-compose serve, through the official openai client: answers, streams, log-probs, per-request weights,
batching, 400s and 401 (the server runs for real, on a free port of this machine)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from composer import DecodingConfig
from composer.config import build_composer, compose
from tests.serving import client, free_port, serving

PROMPTS = [
    "Lily has 20 pens. She buys 7 more. She loses 8. How many pens does Lily have now?",
    "Tell me how to steal my brother's horse.",
    "How do I clean my neighbour's barn?",
    "Write a function max_of_two(a, b) that returns the larger of a and b.",
]
GREEDY = DecodingConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def recipe():
    return build_composer(compose([]))


@pytest.fixture(scope="module")
def served(recipe):
    with serving(recipe, max_batch=8, batch_wait_ms=20) as (url, running):
        yield url, running


def test_completions_match_generate_with_logprobs_and_streams(recipe, served):
    api = client(served[0])
    assert [m.id for m in api.models.list().data] == ["proxy-composer"]
    expected = recipe.generate(PROMPTS[0], GREEDY, logprobs=2)[0]
    got = api.completions.create(model="proxy-composer", prompt=PROMPTS[0], max_tokens=12, temperature=0, logprobs=2)
    choice = got.choices[0]
    assert choice.text == expected.text
    assert got.usage.completion_tokens == len(expected.token_ids)
    assert choice.logprobs.token_logprobs == pytest.approx([s.logprob for s in expected.logprobs], abs=1e-9)
    assert len(choice.logprobs.top_logprobs[0]) == 2
    assert math.isclose(max(choice.logprobs.top_logprobs[0].values()), expected.logprobs[0].top[0][1], abs_tol=1e-9)
    streamed = api.completions.create(model="proxy-composer", prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                      stream=True)  # fmt: skip
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected.text


def test_chat_streams_log_probs_and_usage(recipe, served):
    api = client(served[0])
    messages = [{"role": "user", "content": PROMPTS[2]}]
    expected = recipe.generate(PROMPTS[2], GREEDY)[0].text
    whole = api.chat.completions.create(model="proxy-composer", messages=messages, max_tokens=12, temperature=0,
                                        logprobs=True, top_logprobs=3)  # fmt: skip
    assert whole.choices[0].message.content == expected
    assert len(whole.choices[0].logprobs.content[0].top_logprobs) == 3
    chunks = list(api.chat.completions.create(model="proxy-composer", messages=messages, max_tokens=12,
                                              temperature=0, stream=True, logprobs=True,
                                              stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_objectives_field_steers_one_request(recipe, served):
    api = client(served[0])
    weights = {"code": 0.0}
    expected = recipe.generate(PROMPTS[3], GREEDY, weights=weights)[0].text
    assert expected != recipe.generate(PROMPTS[3], GREEDY)[0].text  # the weights change the answer
    got = api.completions.create(model="proxy-composer", prompt=PROMPTS[3], max_tokens=12, temperature=0,
                                 extra_body={"objectives": weights})  # fmt: skip
    assert got.choices[0].text == expected


def test_concurrent_requests_share_batches_and_answer_as_alone(recipe, served):
    api = client(served[0])
    alone = [r.text for r in recipe.generate(PROMPTS, GREEDY)]
    seeded = {"temperature": 0.9, "seed": 7, "max_tokens": 12}
    sampled_alone = api.completions.create(model="proxy-composer", prompt=PROMPTS[1], **seeded).choices[0].text
    before = json.loads(urllib.request.urlopen(served[0].removesuffix("/v1") + "/health").read())

    def ask(i: int) -> str:
        if i == len(PROMPTS):
            return api.completions.create(model="proxy-composer", prompt=PROMPTS[1], **seeded).choices[0].text
        prompt = PROMPTS[i % len(PROMPTS)]
        got = api.completions.create(model="proxy-composer", prompt=prompt, max_tokens=12, temperature=0)
        return got.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, [0, 1, 2, 3, 4, 0, 1, 2]))
    assert answers[:4] == alone and answers[5:] == alone[:3]
    assert answers[4] == sampled_alone  # a seeded sample is the same beside others
    after = json.loads(urllib.request.urlopen(served[0].removesuffix("/v1") + "/health").read())
    assert after["requests"] - before["requests"] == 8
    assert (after["rows"] - before["rows"]) / (after["steps"] - before["steps"]) > 2  # shared forwards, not in turn


def test_a_client_that_leaves_frees_its_rows(served):
    url = served[0]
    body = json.dumps({"prompt": PROMPTS[3], "max_tokens": 200, "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(f"{url}/completions", body, {"Content-Type": "application/json"})
    before = json.loads(urllib.request.urlopen(url.removesuffix("/v1") + "/health").read())["cancelled"]
    response = urllib.request.urlopen(request)
    response.readline()  # the first event: decoding has begun
    response.close()
    deadline = time.monotonic() + 20
    while json.loads(urllib.request.urlopen(url.removesuffix("/v1") + "/health").read())["cancelled"] == before:
        assert time.monotonic() < deadline, "the row of a closed stream kept decoding"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "objectives": {"nope": 1.0}}, "objectives"),
        ({"prompt": "hi", "objectives": {"math": "high"}}, "objectives.math"),
        ({"prompt": "hi", "objectives": {"safety": -1.0}}, "objectives"),  # protected
        ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": "hi", "frobnicate": 1}, "frobnicate"),
        ({"prompt": "word " * 300, "max_tokens": 4}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "hi", "n": 2, "temperature": 0}, "n"),
    ],
)
def test_bad_requests_get_400_naming_the_field(served, body, param):
    extra = {key: body.pop(key) for key in ("objectives", "frobnicate") if key in body}
    with pytest.raises(openai.BadRequestError) as caught:
        client(served[0]).completions.create(model="proxy-composer", **body, extra_body=extra)
    assert caught.value.body["param"] == param
    assert caught.value.body["message"]


def test_malformed_json_a_nan_weight_and_an_unknown_model(served):
    for body, said in [(b"{not json", "not valid JSON"), (b'{"prompt": "hi", "objectives": {"math": NaN}}', "finite")]:
        request = urllib.request.Request(f"{served[0]}/completions", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request)
        assert caught.value.code == 400
        assert said in json.loads(caught.value.read())["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client(served[0]).completions.create(model="gpt-4", prompt="hi", max_tokens=2)


def test_a_key_is_required_once_set(recipe):
    with serving(recipe, api_key="s3cret") as (url, _):
        with pytest.raises(openai.AuthenticationError):
            client(url).completions.create(model="proxy-composer", prompt="hi", max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            client(url, key="wrong").models.list()
        got = client(url, key="s3cret").completions.create(model="proxy-composer", prompt="hi", max_tokens=2)
        assert got.usage.completion_tokens <= 2


def test_the_command_serves_the_recipe():
    port = free_port()
    command = [sys.executable, "-m", "composer", "serve", f"serve.port={port}", "~objectives.code", "~objectives.math"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "serving 1 objective(s) ['safety']" in process.stdout.readline()
        deadline = time.monotonic() + 60
        while True:
            try:
                got = client(f"http://127.0.0.1:{port}/v1").completions.create(
                    model="proxy-composer", prompt=PROMPTS[1], max_tokens=8, temperature=0
                )
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        assert got.choices[0].text
    finally:
        process.terminate()
        process.wait(10)


def test_serve_refuses_bad_settings_in_one_line():
    done = subprocess.run([sys.executable, "-m", "composer", "serve", "serve.max_batch=0"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: serve.max_batch=0 must be a whole number >= 1"]
