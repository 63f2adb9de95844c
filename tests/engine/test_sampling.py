"""Sampler and stop-string matcher, without a model."""

from __future__ import annotations

import torch

from conduit.engine.llm import StopStringMatcher
from conduit.engine.sampling import SamplingParams, make_generator, sample

LOGITS = torch.tensor([1.0, 3.0, 2.5, -1.0, 0.0, 2.9])


def draws(params: SamplingParams, n: int = 300) -> set[int]:
    generator = make_generator(params.seed)
    return {sample(LOGITS, params, generator) for _ in range(n)}


def test_greedy_is_argmax():
    assert draws(SamplingParams(temperature=0), 5) == {1}
    assert draws(SamplingParams(temperature=1.0, top_k=1), 5) == {1}


def test_top_k_and_top_p_restrict_the_candidates():
    assert draws(SamplingParams(top_k=2, seed=0)) == {1, 5}
    # softmax mass: 1 -> 0.37, 5 -> 0.33, 2 -> 0.22: top_p 0.5 keeps the first two.
    assert draws(SamplingParams(top_p=0.5, seed=0)) == {1, 5}
    assert draws(SamplingParams(top_p=1e-6, seed=0)) == {1}
    assert draws(SamplingParams(top_k=3, top_p=0.5, seed=0)) == {1, 5}
    assert len(draws(SamplingParams(temperature=5.0, seed=0))) == len(LOGITS)


def test_seed_reproducibility():
    params = SamplingParams(temperature=2.0, seed=7)
    runs = []
    for _ in range(2):
        generator = make_generator(params.seed)
        runs.append([sample(LOGITS, params, generator) for _ in range(50)])
    assert runs[0] == runs[1]


def test_params_normalisation():
    params = SamplingParams(stop="END", top_k=None)
    assert params.stop == ["END"] and params.top_k == 0
    assert SamplingParams(stop=["", "x"]).stop == ["x"]


def feed(matcher: StopStringMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    out = []
    for i, piece in enumerate(pieces):
        text, stopped = matcher.push(piece, final=i == len(pieces) - 1)
        out.append(text)
        if stopped:
            return out, True
    return out, False


def test_stop_matcher_holds_back_a_possible_stop_prefix():
    out, stopped = feed(StopStringMatcher(["</end>"]), ["Hello </", "en", "d> tail"])
    assert out == ["Hello ", "", ""] and stopped


def test_stop_matcher_releases_a_false_alarm():
    out, stopped = feed(StopStringMatcher(["</end>"]), ["a </e", "x> b", " c"])
    assert "".join(out) == "a </ex> b c" and out[0] == "a " and not stopped


def test_stop_matcher_picks_the_earliest_of_several_stops():
    out, stopped = feed(StopStringMatcher(["BB", "A"]), ["xxBBA", "yy"])
    assert out == ["xx"] and stopped


def test_stop_matcher_without_stops_passes_text_through():
    assert feed(StopStringMatcher([]), ["a", "b"]) == (["a", "b"], False)


def test_stop_matcher_final_flushes_held_text():
    out, stopped = feed(StopStringMatcher(["STOP"]), ["abc ST", "O"])
    assert out == ["abc ", "STO"] and not stopped
