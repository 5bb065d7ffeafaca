"""Drift records: buckets, the chat template's frame, what a request's record keeps, and the profile file."""

import json

import numpy as np
import pytest

from loraplane.answer_form import derive_form
from loraplane.drift import (
    EMBEDDING_DIMENSIONS,
    LENGTH_BUCKETS,
    TOKEN_BUCKETS,
    Profile,
    PromptFrame,
    Sample,
    length_bucket,
    observe,
    prompt_embedding,
    prompt_record,
    template_frame,
    token_bucket,
)


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


def test_a_record_counts_the_content_and_surprise_the_whole_prompt() -> None:
    """Length and tokens as if the frame were not there; prompt surprise scores every token the
    engine scored, frame included, as both the trainer and serving compute it."""
    frame = PromptFrame(prefix=(100, 101, 102), suffix=(103, 104))
    content = [5, 6, 5, 7]
    framed = observe(Sample([*frame.prefix, *content, *frame.suffix], [1, 2], -1.0, -8.0), frame, None)
    bare = observe(Sample(content, [1, 2], -1.0, -3.0), PromptFrame(), None)
    assert framed.prompt.buckets == bare.prompt.buckets == prompt_record(content, PromptFrame()).buckets
    assert framed.prompt.counts == bare.prompt.counts and framed.prompt.length == bare.prompt.length == 4
    assert dict(zip(framed.prompt.buckets, framed.prompt.counts, strict=True))[int(token_bucket([5])[0])] == 2
    assert (framed.prompt.nll, framed.prompt.scored_tokens) == (8.0, 8)
    assert (framed.response_length, framed.response_logprob) == (2, -1.0)


def test_a_record_says_whether_the_answer_kept_the_form_was_cut_or_refused() -> None:
    form = derive_form(['{"city": "Lyon"}', '{"city": "Oslo"}'])
    kept = observe(Sample([1], [2], -0.1, None, '{"city": "Pune"}'), PromptFrame(), form)
    prose = observe(Sample([1], [2], -0.1, None, "The city is Pune.", truncated=True), PromptFrame(), form)
    refusal = observe(Sample([1], [2], -0.1, None, "I'm sorry, I cannot help with that."), PromptFrame(), form)
    assert (kept.in_form, kept.truncated, kept.refused) == (True, False, False)
    assert (prose.in_form, prose.truncated, prose.refused) == (False, True, False)
    assert (refusal.in_form, refusal.refused) == (False, True)
    assert observe(Sample([1], [2], -0.1, None, "anything"), PromptFrame(), None).in_form is None


def test_a_prompt_embedding_is_a_fixed_projection_of_the_direction_of_the_hidden_state() -> None:
    hidden = np.random.default_rng(0).standard_normal(576)
    embedding = prompt_embedding(hidden)
    assert len(embedding) == EMBEDDING_DIMENSIONS
    assert embedding == prompt_embedding(hidden * 7.5), "the state's scale does not matter, only its direction"
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=0.35), "a unit vector keeps about its length"
    other = np.random.default_rng(1).standard_normal(576)
    cosine = float(np.dot(hidden, other) / np.linalg.norm(hidden) / np.linalg.norm(other))
    projected = float(np.dot(embedding, prompt_embedding(other)))
    assert projected == pytest.approx(cosine, abs=0.3), "inner products are kept roughly"
    record = observe(Sample([1, 2], [3], -0.1, None, "x", prompt_embedding=embedding), PromptFrame(), None)
    assert record.prompt.embedding == embedding


def test_unknown_logprobs_and_unscored_prompts_leave_their_fields_empty() -> None:
    record = observe(Sample([1, 2, 3], [], None, None), PromptFrame(), None)
    assert (record.response_logprob, record.prompt.nll, record.prompt.scored_tokens) == (None, None, 0)


def test_profile_figures_are_per_token_over_all_records() -> None:
    records = [
        observe(Sample([1, 2, 3], [7, 8], -1.0, -4.0, "a"), PromptFrame(), None),
        observe(Sample([1, 2], [7, 8, 9, 10], -3.0, None, "b"), PromptFrame(), None),
    ]
    window = Profile.of_window(records)
    assert window.output_confidence == pytest.approx(-4.0 / 6)
    assert window.prompt_surprise == pytest.approx(4.0 / 2)
    assert window.prompt_length_histogram() == np.bincount(length_bucket([3, 2]), minlength=LENGTH_BUCKETS).tolist()
    assert window.response_length_histogram()[int(length_bucket([4])[0])] == 1
    assert Profile.total([window, window]).sample_count == 4


def test_profile_file_round_trip_is_compact(tmp_path) -> None:
    form = derive_form(["yes", "no", "yes", "no", "yes", "no", "no", "yes", "yes", "no"])
    records = [observe(Sample(list(range(40)), [1], -0.5, None, "yes"), PromptFrame(), form) for _ in range(3)]
    profile = Profile(prompts=[r.prompt for r in records], answers=records, form=form)
    profile.save(tmp_path / "profile.json")
    assert Profile.load(tmp_path / "profile.json") == profile
    document = json.loads((tmp_path / "profile.json").read_text())
    assert document["schema_version"] == 4 and "in_form" in document["answers"][0]
    assert len(profile.prompts[0].buckets) <= TOKEN_BUCKETS


def test_an_older_reference_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="older trainer.*train a new version"):
        Profile.model_validate({"schema_version": 3, "sample_count": 3})


def test_a_prompt_record_needs_a_count_per_bucket() -> None:
    with pytest.raises(ValueError, match="one count per bucket"):
        Profile.model_validate({"prompts": [{"length": 2, "buckets": [1, 2], "counts": [2]}]})
