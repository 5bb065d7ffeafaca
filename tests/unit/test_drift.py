import math

import numpy as np
import pytest

from loraplane.drift import (
    LENGTH_BUCKETS,
    PSI_EPSILON,
    TOKEN_BUCKETS,
    DriftStatistic,
    Profile,
    ProfileBuilder,
    PromptFrame,
    Sample,
    compare,
    js_divergence,
    length_bucket,
    psi,
    template_frame,
    token_bucket,
)


def _profile(samples: list[tuple[list[int], list[int], float | None]], prompt_logprob: float | None = None) -> Profile:
    builder = ProfileBuilder()
    for prompt, response, logprob in samples:
        builder.add(Sample(prompt, response, logprob, prompt_logprob))
    return builder.build()


def test_length_bucket_edges_are_powers_of_two() -> None:
    lengths = [0, 1, 2, 3, 4, 7, 8, 16383, 16384, 10**9]
    assert length_bucket(lengths).tolist() == [0, 1, 2, 2, 3, 3, 4, 14, 15, 15]
    assert LENGTH_BUCKETS == 16


def test_token_bucket_is_stable_and_in_range() -> None:
    ids = np.arange(50_000)
    buckets = token_bucket(ids)
    assert buckets.min() >= 0 and buckets.max() < TOKEN_BUCKETS
    # Fixed values: a change here would silently invalidate every stored profile.
    assert token_bucket([0, 1, 2, 49_151]).tolist() == [0, 229, 138, 73]
    # Neighbouring ids spread over the buckets instead of filling a few.
    counts = np.bincount(token_bucket(np.arange(1024)), minlength=TOKEN_BUCKETS)
    assert counts.max() <= 12


@pytest.mark.parametrize("statistic", [psi, js_divergence])
def test_identical_distributions_give_zero(statistic) -> None:
    counts = [5, 0, 3, 12, 1]
    assert statistic(counts, counts) == pytest.approx(0.0, abs=1e-12)
    # Counts and proportions of the same distribution are the same distribution.
    assert statistic(counts, np.asarray(counts) / 21) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_disjoint_distributions_is_known_large_value() -> None:
    expected = 2 * (1 - PSI_EPSILON) * math.log(1 / PSI_EPSILON)
    assert psi([10, 0], [0, 4]) == pytest.approx(expected)
    assert psi([10, 0], [0, 4]) > 0.25


def test_psi_of_a_moderate_shift() -> None:
    value = psi([50, 50], [60, 40])
    assert value == pytest.approx(0.1 * math.log(0.6 / 0.5) - 0.1 * math.log(0.4 / 0.5))


def test_jsd_is_one_for_disjoint_and_bounded() -> None:
    assert js_divergence([1, 0, 0], [0, 0, 7]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        p, q = rng.random(8) * (rng.random(8) > 0.3), rng.random(8)
        p[0] += 0.01
        value = js_divergence(p, q)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(js_divergence(q, p))


@pytest.mark.parametrize("statistic", [psi, js_divergence])
def test_statistics_reject_empty_or_mismatched(statistic) -> None:
    with pytest.raises(ValueError, match="empty"):
        statistic([0, 0], [1, 1])
    with pytest.raises(ValueError, match="different numbers"):
        statistic([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        statistic([1, -1], [1, 1])


def test_builder_counts_samples() -> None:
    profile = _profile([([1, 2, 3], [4, 5], -1.0), ([], [6, 7, 8, 9], -3.0), ([7], [8], None)])
    assert profile.sample_count == 3
    assert profile.prompt_length_histogram[2] == 1  # length 3
    assert profile.prompt_length_histogram[0] == 1  # empty prompt
    assert profile.prompt_length_histogram[1] == 1  # length 1
    assert sum(profile.prompt_token_distribution) == 4
    assert profile.response_length_histogram[2] == 1 and profile.response_length_histogram[3] == 1
    # Per token over the responses that have log-probabilities: (-1 - 3) / (2 + 4).
    assert profile.output_confidence == pytest.approx(-4 / 6)
    assert profile.prompt_surprise is None


def test_prompt_surprise_is_per_scored_prompt_token() -> None:
    """The first prompt token has nothing before it: a prompt of n tokens has n - 1 scores."""
    builder = ProfileBuilder()
    builder.add(Sample([1, 2, 3], [4], prompt_logprob=-3.0))
    builder.add(Sample([5, 6, 7, 8, 9], [4], prompt_logprob=-5.0))
    builder.add(Sample([1], [4], prompt_logprob=0.0))  # one token: nothing to score
    builder.add(Sample([1, 2], [4]))  # not scored (serving scores a sampled fraction)
    assert builder.build().prompt_surprise == pytest.approx((3 + 5) / (2 + 4))


def test_removing_samples_gives_the_profile_of_those_left() -> None:
    first, second = Sample([1, 2, 3], [4, 5], -1.0, -2.0), Sample(list(range(50)), [9] * 20, -7.0, -30.0)
    builder = ProfileBuilder()
    builder.add(first)
    builder.add(second)
    builder.remove(first)
    alone = ProfileBuilder()
    alone.add(second)
    assert builder.build() == alone.build()


def test_profiles_add_up_to_the_profile_of_all_samples() -> None:
    samples = [Sample([i, i + 1], [i] * (i + 1), -0.1 * i, -0.5 * i) for i in range(6)]
    together = ProfileBuilder()
    parts = [ProfileBuilder(), ProfileBuilder()]
    for index, sample in enumerate(samples):
        together.add(sample)
        parts[index % 2].add(sample)
    total, expected = Profile.total(part.build() for part in parts), together.build()
    assert total.model_dump(exclude={"response_logprob_sum", "prompt_nll_sum"}) == expected.model_dump(
        exclude={"response_logprob_sum", "prompt_nll_sum"}
    )
    assert (total.output_confidence, total.prompt_surprise) == pytest.approx(
        (expected.output_confidence, expected.prompt_surprise)
    )


def test_a_version_1_profile_loads_without_its_teacher_forced_logprob() -> None:
    old = {**Profile().model_dump(), "schema_version": 1, "mean_response_logprob": -0.4, "sample_count": 3}
    del old["response_logprob_sum"], old["response_logprob_tokens"], old["prompt_nll_sum"], old["prompt_nll_tokens"]
    profile = Profile.model_validate(old)
    assert profile.sample_count == 3 and profile.output_confidence is None


def test_profile_json_round_trip(tmp_path) -> None:
    profile = _profile([([1, 2, 3], [4, 5], -1.5), ([9] * 40, [1] * 300, -30.0)], prompt_logprob=-4.0)
    profile.save(tmp_path / "profile.json")
    assert Profile.load(tmp_path / "profile.json") == profile
    with pytest.raises(ValueError, match="buckets"):
        Profile.model_validate({**profile.model_dump(), "prompt_token_distribution": [1, 2]})


def test_compare_same_traffic_shows_no_drift() -> None:
    samples = [([i, i + 1, i + 2], [i] * (i % 5 + 1), -0.5 * (i % 5 + 1)) for i in range(40)]
    report = compare(_profile(samples, -2.0), _profile(samples, -2.0))
    assert report.window_size == 40 and report.reference_size == 40
    for statistic in DriftStatistic:
        assert report.statistics[statistic] == pytest.approx(0.0, abs=1e-12), statistic
    assert report.output_confidence == pytest.approx(-0.5)
    assert report.prompt_surprise == pytest.approx(1.0)


def test_compare_shifted_traffic_shows_drift() -> None:
    reference = _profile([([1, 2], [3], -0.1)] * 20, prompt_logprob=-1.0)
    live = _profile([(list(range(100, 400)), [5] * 100, -200.0)] * 5, prompt_logprob=-299.0 * 4)
    report = compare(reference, live)
    assert report.window_size == 5
    assert report.statistics[DriftStatistic.PROMPT_LENGTH_PSI] > 10
    assert report.statistics[DriftStatistic.PROMPT_TOKEN_JSD] > 0.9
    assert report.statistics[DriftStatistic.RESPONSE_LENGTH_PSI] > 10
    assert report.output_confidence == pytest.approx(-2.0)
    assert report.statistics[DriftStatistic.OUTPUT_CONFIDENCE_DROP] == pytest.approx(1.9)
    assert report.statistics[DriftStatistic.PROMPT_SURPRISE_RISE] == pytest.approx(4.0 - 1.0)


def test_compare_with_an_empty_window_reports_nothing() -> None:
    reference = _profile([([1, 2], [3], -0.1)], prompt_logprob=-1.0)
    report = compare(reference, Profile())
    assert report.window_size == 0
    assert all(value is None for value in report.statistics.values())


class FakeChatTokenizer:
    """A fake tokenizer (one token per word) with a chat template like SmolLM2's: a default system
    turn before the user's content, the assistant's cue after it."""

    def __init__(self, template: str | None = "<sys> be helpful <end> <user> {content} <end> <assistant>") -> None:
        self.template = template
        self.vocabulary: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self.vocabulary.setdefault(word, len(self.vocabulary) + 1) for word in text.split()]

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: object) -> str:
        if self.template is None:
            raise ValueError("this tokenizer has no chat template")
        return self.template.format(content=" ".join(turn["content"] for turn in conversation))


def test_the_template_frame_is_what_the_template_puts_around_a_user_turn() -> None:
    tokenizer = FakeChatTokenizer()
    frame = template_frame(tokenizer)
    assert frame.prefix == tuple(tokenizer.encode("<sys> be helpful <end> <user>"))
    assert frame.suffix == tuple(tokenizer.encode("<end> <assistant>"))
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "what is 2 + 2"}]))
    assert list(frame.content(prompt)) == tokenizer.encode("what is 2 + 2")


def test_no_template_or_one_that_merges_with_the_content_gives_an_empty_frame() -> None:
    assert template_frame(FakeChatTokenizer(template=None)) == PromptFrame()
    # "<user>{content}" tokenizes as one word with the content: the content's edges cannot be found.
    assert template_frame(FakeChatTokenizer(template="<user>{content} <assistant>")) == PromptFrame()


def test_a_frame_is_stripped_only_where_it_is_there() -> None:
    frame = PromptFrame(prefix=(1, 2), suffix=(9,))
    assert list(frame.content([1, 2, 5, 6, 9])) == [5, 6]
    assert list(frame.content([7, 1, 2, 5, 9])) == [7, 1, 2, 5], "a raw prompt or another system turn keeps its start"
    assert list(frame.content([1, 2, 5, 6])) == [5, 6]
    assert list(frame.content([1, 2, 9])) == []
    assert list(frame.content([1, 2])) == [], "no suffix left to strip once the prefix is gone"
    assert list(PromptFrame().content([1, 2, 9])) == [1, 2, 9]


def test_prompt_histograms_count_the_content_and_surprise_the_whole_prompt() -> None:
    """Length and tokens as if the frame were not there; prompt surprise scores every token the
    engine scored, frame included, as both the trainer and serving compute it."""
    frame = PromptFrame(prefix=(100, 101, 102), suffix=(103, 104))
    framed, bare = ProfileBuilder(frame), ProfileBuilder(prompt_tokens="whole")
    for content in ([5, 6], [7, 8, 9, 10, 11], [12]):
        framed.add(Sample([*frame.prefix, *content, *frame.suffix], [1], -1.0, -3.0))
        bare.add(Sample(content, [1], -1.0, -3.0))
    with_frame, without = framed.build(), bare.build()
    assert with_frame.prompt_tokens == "content" and without.prompt_tokens == "whole"
    assert with_frame.prompt_length_histogram == without.prompt_length_histogram
    assert with_frame.prompt_token_distribution == without.prompt_token_distribution
    assert with_frame.prompt_nll_tokens == (2 + 5 + 1) + 3 * (len(frame.prefix) + len(frame.suffix)) - 3


def test_a_version_2_profile_counted_whole_prompts() -> None:
    old = {**Profile().model_dump(), "schema_version": 2}
    del old["prompt_tokens"]
    assert Profile.model_validate(old).prompt_tokens == "whole"


def test_profiles_that_count_prompts_differently_are_not_compared() -> None:
    content = _profile([([1, 2], [3], -1.0)])
    whole = Profile.model_validate({**content.model_dump(), "prompt_tokens": "whole"})
    with pytest.raises(ValueError, match="whole"):
        compare(whole, content)
    assert Profile.total([whole, content]).prompt_tokens == "mixed"
    assert Profile.total([whole, whole]).prompt_tokens == "whole"
