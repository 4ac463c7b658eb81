"""Speculative composition is exact: greedy gives the plain loop's tokens, sampling the composed distribution."""

import pytest
import torch

from composer import Chat, Composer, DecodingConfig, Linear, Member, ModelSpec, Objective, Template, UserInputError
from composer.session import Session
from composer.speculative import Draft, _Speculator
from tests.tiny_models import build_model, build_sliding_window_family, build_tokenizer


def objectives(paths: dict[str, str]) -> list[Objective]:
    """Two objectives sharing one anti-expert, a prompted expert, and a schedule that moves within a window."""
    return [
        Objective(
            "safe", Member(ModelSpec(paths["expert_a"]), Chat(system="be safe")), Member(ModelSpec(paths["anti"]))
        ),
        Objective(
            "code",
            Member(ModelSpec(paths["expert_b"]), Template("question {prompt} answer")),
            Member(ModelSpec(paths["anti"])),
            weight=-0.6,
            schedule=Linear(start=1.0, end=0.0, steps=5),
        ),
    ]


@pytest.mark.parametrize(("gamma", "schedule"), [(1, "constant"), (3, "constant"), (6, "constant"), (2, "heuristic")])
def test_greedy_tokens_equal_plain_greedy(tiny, gamma, schedule):
    composer = Composer(tiny["base"], objectives(tiny))
    prompts = ["the cat sat on", "hello world please help me write a function", "x"]
    config = DecodingConfig(max_new_tokens=14)
    plain = composer.generate(prompts, config, trace=True)
    draft = Draft(gamma=gamma, gamma_schedule=schedule)
    fast = composer.generate(prompts, config, draft=draft, trace=True)
    assert [f.token_ids for f in fast] == [p.token_ids for p in plain]
    for f, p in zip(fast, plain, strict=True):  # pytest.approx compares flat lists, not lists of dicts
        contributions = [[v for t in c.trace for v in t.contributions.values()] for c in (f, p)]
        assert contributions[0] == pytest.approx(contributions[1], rel=1e-5)
    assert draft.stats.rounds > 0 and draft.stats.tested > 0


def test_the_heuristic_schedule_drafts_more_after_full_acceptance_and_fewer_after_a_rejection(tiny, monkeypatch):
    """transformers' num_assistant_tokens_schedule="heuristic": +2 when every row accepted all, else -1 (>= 1),
    carried over from one generate call to the next."""
    composer = Composer(tiny["base"], objectives(tiny))
    draft = Draft(gamma=3, gamma_schedule="heuristic")
    planned, rounds = [], []
    next_gamma, accept = Draft.next_gamma, _Speculator._accept

    def planning(self):
        planned.append(next_gamma(self))
        return planned[-1]

    def recorded(self, head, bonus, drafts, *rest):
        tokens, kept, composed = accept(self, head, bonus, drafts, *rest)
        rounds.append((drafts.shape[1], bool((kept == drafts.shape[1] + 1).all())))
        return tokens, kept, composed

    monkeypatch.setattr(Draft, "next_gamma", planning)
    monkeypatch.setattr(_Speculator, "_accept", recorded)
    config = DecodingConfig(max_new_tokens=40)
    composer.generate(["the cat sat on", "hello world"], config, draft=draft)
    composer.generate(["x y"], config, draft=draft)
    assert planned[0] == 3 and len(planned) == len(rounds)
    for before, (gamma, all_accepted), after in zip(planned, rounds, planned[1:], strict=False):
        if gamma == 0:  # one token left: nothing was drafted, nothing learnt
            assert after == before
        else:
            assert after == (before + 2 if all_accepted else max(1, before - 1))
    assert {all_accepted for gamma, all_accepted in rounds if gamma} == {True, False}  # both rules ran
    assert draft.stats.mean_gamma == pytest.approx(sum(g for g, _ in rounds) / len(rounds))
    assert Draft(gamma=3).next_gamma() == 3
    with pytest.raises(UserInputError, match="use one of \\('constant', 'heuristic'\\)"):
        Draft(gamma_schedule="adaptive")


def test_the_draft_streams_run_past_the_last_draft_only_for_a_bonus_token(tiny, monkeypatch):
    """A round runs the draft's streams once per draft, and once more only if some row accepted every draft."""
    composer = Composer(tiny["base"], objectives(tiny))
    forwards, expected, bonuses = [0], [], []
    advance, accept = Session.advance, _Speculator._accept

    def counted(self, unit, tokens):
        forwards[-1] += unit != 0  # unit 0 is the base, alone; unit 1 the stack of small models that drafts
        return advance(self, unit, tokens)

    def recorded(self, head, bonus, drafts, *rest):
        tokens, kept, composed = accept(self, head, bonus, drafts, *rest)  # the bonus forward runs in here
        bonuses.append(int(kept.max()) == drafts.shape[1] + 1)
        expected.append(drafts.shape[1] + bonuses[-1])
        forwards.append(0)
        return tokens, kept, composed

    monkeypatch.setattr(Session, "advance", counted)
    monkeypatch.setattr(_Speculator, "_accept", recorded)
    prompts = ["the cat sat on", "hello world please help me write a function"]
    composer.generate(prompts, DecodingConfig(max_new_tokens=40), draft=Draft(gamma=3))
    assert forwards[:-1] == expected
    assert any(bonuses) and not all(bonuses)


@pytest.mark.parametrize("new", [1, 2])
def test_the_shortest_outputs_equal_plain_greedy(tiny, new):
    composer = Composer(tiny["base"], objectives(tiny))
    prompts, config = ["the cat sat on", "x"], DecodingConfig(max_new_tokens=new)
    fast = composer.generate(prompts, config, draft=Draft(gamma=3))
    assert [f.token_ids for f in fast] == [p.token_ids for p in composer.generate(prompts, config)]
    assert all(len(f.token_ids) <= new for f in fast)


def test_rows_retracted_unevenly_continue_as_if_each_was_cropped_alone(tiny):
    """The primitive behind per-row acceptance: masked columns, per-row positions and per-row schedule steps."""
    composer = Composer(tiny["base"], objectives(tiny))
    prompts = ["the cat sat on", "hello world please help me write a function", "x"]
    ids = composer.tokenizer("dog ran to park mat safe", add_special_tokens=False)["input_ids"]
    fed, then = torch.tensor([ids[:4], ids[1:5], ids[2:6]]), torch.tensor([[ids[5]], [ids[0]], [ids[3]]])
    keep = torch.tensor([1, 4, 2])
    session = composer.session(prompts, max_new_tokens=8)
    session.start()
    session.extend(fed)
    session.retract(keep, appended=4)
    assert session.steps.tolist() == keep.tolist() and session.generated == 4
    ragged = session.extend(then)
    for row, prompt in enumerate(prompts):
        alone = composer.session([prompt], max_new_tokens=8)
        alone.start()
        alone.extend(fed[row : row + 1, : keep[row]])
        expected = alone.extend(then[row : row + 1])
        assert torch.allclose(ragged.weights[:, row], expected.weights[:, 0])
        assert torch.allclose(ragged.logits[row], expected.logits[0], atol=1e-4)


@pytest.fixture(scope="module")
def sliding(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_sliding_window_family(tmp_path_factory.mktemp("sliding"), window=4)


@pytest.mark.parametrize("steer", [True, False])
def test_sliding_window_models_speculate_exactly(sliding, steer):
    """A window counts cache columns: its layers could not be cropped once full (a RuntimeError), and the
    columns a row rejected, masked in place, took room in its window (other tokens than plain greedy)."""
    spec = {name: ModelSpec(path, dtype="float64") for name, path in sliding.items()}
    composer = Composer(spec["base"], [Objective("o", Member(spec["expert"]), Member(spec["anti"]), weight=0.3)])
    prompts = ["hello", "the cat sat on the mat and ran to park", "write a function add two numbers please help me"]
    config = DecodingConfig(max_new_tokens=16)
    draft = Draft(gamma=3) if steer else Draft(model=spec["expert"], steer=False, gamma=3)
    fast = composer.generate(prompts, config, draft=draft)
    assert [f.token_ids for f in fast] == [p.token_ids for p in composer.generate(prompts, config)]
    assert 0 < draft.stats.acceptance_rate < 1  # rows rejected at different drafts


def test_a_single_small_expert_can_draft(tiny):
    composer = Composer(tiny["base"], objectives(tiny))
    config = DecodingConfig(max_new_tokens=10)
    plain = composer.generate("the dog ran", config)[0]
    draft = Draft(model=Member(ModelSpec(tiny["expert_b"]), Template("question {prompt} answer")), steer=False)
    assert composer.generate("the dog ran", config, draft=draft)[0].token_ids == plain.token_ids
    by_path = Draft(model=tiny["expert_b"] + "/", steer=False)  # a path names it whatever its prompt format
    assert composer.generate("the dog ran", config, draft=by_path)[0].token_ids == plain.token_ids


def test_draft_must_be_a_member(tiny):
    composer = Composer(tiny["base"], objectives(tiny))
    with pytest.raises(UserInputError, match="not an expert or anti-expert"):
        composer.generate("the cat", DecodingConfig(max_new_tokens=3), draft=Draft(model=tiny["expert_c"]))


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Models over a 10-token vocabulary, so that the distribution of two tokens has few cells."""
    tokenizer = build_tokenizer(["a", "b", "c"])
    root = tmp_path_factory.mktemp("small_vocab")
    shapes = {"base": (0, 3, 48), "expert_a": (1, 2, 32), "expert_b": (2, 2, 32), "anti": (4, 2, 32)}
    return {
        name: str(build_model(root / name, seed, tokenizer, layers=layers, hidden=hidden))
        for name, (seed, layers, hidden) in shapes.items()
    }


def exact_pair_distribution(composer: Composer, prompt: str, config: DecodingConfig) -> torch.Tensor:
    """P(token 1, token 2) of plain composed sampling, (V, V), summed over token 0, by enumeration."""
    processors = config.processors()
    session = composer.session([prompt], max_new_tokens=3)
    history = torch.tensor([composer.tokenizer(prompt)["input_ids"]])

    def probs(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(processors(ids, logits[:, -1].double()), -1)[0]

    p0 = probs(history, session.start().logits)
    width = p0.shape[0]
    joint = torch.zeros(width, width, dtype=torch.float64)
    for t0 in p0.nonzero()[:, 0].tolist():
        session.crop(0)
        h1 = torch.cat([history, torch.tensor([[t0]])], 1)
        p1 = probs(h1, session.extend(torch.tensor([[t0]])).logits)
        for t1 in p1.nonzero()[:, 0].tolist():
            session.crop(1)
            h2 = torch.cat([h1, torch.tensor([[t1]])], 1)
            joint[t1] += p0[t0] * p1[t1] * probs(h2, session.extend(torch.tensor([[t1]])).logits)
    return joint


def chi_square_p_value(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's test, with cells expecting fewer than 5 draws pooled into one."""
    small = expected < 5
    observed = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    degrees = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(degrees / 2), statistic / 2))


@pytest.mark.parametrize("drafter", ["anti", "base"])
def test_sampling_matches_the_composed_distribution(small_vocab, drafter):
    """Tokens 1 and 2 are drafted, verified, corrected or added as bonus: their joint law must be the target's.

    In a batch this large some row always rejects, so the anti-expert's draft checks the correction path;
    the base's own composition as draft is always accepted and checks the bonus path.
    """
    composer = Composer(small_vocab["base"], objectives(small_vocab))
    composer.eos_ids = set()  # fixed-length samples: every draw yields tokens 1 and 2
    draws = 4000
    config = DecodingConfig(
        max_new_tokens=3,
        do_sample=True,
        temperature=1.7,
        top_k=7,
        top_p=0.97,
        repetition_penalty=1.3,
        num_return_sequences=draws,
        seed=0,
    )
    draft = Draft(model=small_vocab[drafter], gamma=2)
    samples = composer.generate("a b", config, draft=draft)
    pairs = torch.tensor([s.token_ids[1:3] for s in samples])
    expected = exact_pair_distribution(composer, "a b", config)
    counts = torch.zeros_like(expected).index_put_((pairs[:, 0], pairs[:, 1]), torch.tensor(1.0).double(), True)
    if drafter == "base":
        assert draft.stats.acceptance_rate == 1.0 and draft.stats.tokens_per_round > 1
    else:
        assert 0.05 < draft.stats.acceptance_rate < 0.95
    assert chi_square_p_value(counts.flatten(), draws * expected.flatten()) > 1e-3
    other = exact_pair_distribution(Composer(small_vocab["anti"], objectives(small_vocab)), "a b", config)
    assert chi_square_p_value(counts.flatten(), draws * other.flatten()) < 1e-6  # the test tells laws apart
