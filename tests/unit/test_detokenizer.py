"""IncrementalDetokenizer over a fake byte-level decoder and real tokenizers: streamed text never changes,
joins to the one-shot decode, stop strings end it, and each token decodes a window of bounded size."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from serving_svc.engines.detokenizer import IncrementalDetokenizer

REPLACEMENT = "\ufffd"


class FakeByteDecoder:
    """Token id i is `pieces[i]`; decoding joins the bytes and replaces what is not UTF-8 (yet)."""

    def __init__(self, pieces: list[bytes], special: frozenset[int] = frozenset()) -> None:
        self.pieces = pieces
        self.special = special

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        kept = [i for i in token_ids if not (skip_special_tokens and i in self.special)]
        return b"".join(self.pieces[i] for i in kept).decode("utf-8", errors="replace")


def _pieces(parts: list[str | bytes]) -> list[bytes]:
    return [p.encode() if isinstance(p, str) else p for p in parts]


def _run(parts: list[str | bytes], stop: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    """Feed every token (the last one final) until a stop string ends the text; the deltas and `stopped`."""
    pieces = _pieces(parts)
    detokenizer = IncrementalDetokenizer(FakeByteDecoder(pieces), stop)
    deltas = []
    for token_id in range(len(pieces)):
        deltas.append(detokenizer.add(token_id, final=token_id == len(pieces) - 1))
        if detokenizer.stopped:
            break
    return deltas, detokenizer.stopped


@pytest.mark.parametrize(
    "parts",
    [
        ["Hel", "lo", " wor", "ld"],
        ["a"],
        [b"caf", b"\xc3", b"\xa9", b"!"],  # é split over two tokens
        [b"\xe2", b"\x82\xac", b"5"],  # € as 1 + 2 bytes
        [b"\xe2\x82", b"\xac"],  # € as 2 + 1 bytes
        [b"\xf0", b"\x9f", b"\x98", b"\x80", b" ok"],  # an emoji, one byte a token
        [b"\xc3\xa9\xc3", b"\xa9"],  # a whole character, then half of the next
    ],
)
def test_deltas_join_to_the_full_decode_and_never_send_half_a_character(parts: list[str | bytes]) -> None:
    deltas, stopped = _run(parts)
    full = b"".join(_pieces(parts)).decode()
    assert "".join(deltas) == full
    assert not stopped
    assert all(REPLACEMENT not in delta for delta in deltas)


def test_without_stop_strings_whole_characters_are_sent_at_once() -> None:
    deltas, _ = _run(["Hel", "lo", b"\xc3", b"\xa9", "!"])
    assert deltas == ["Hel", "lo", "", "é", "!"]


def test_the_final_step_releases_an_incomplete_character() -> None:
    deltas, _ = _run(["ab", b"\xc3"])
    assert deltas == ["ab", REPLACEMENT]


@pytest.mark.parametrize(
    ("parts", "stop", "text"),
    [
        (["Hello", "###", "more"], ("###",), "Hello"),
        (["Hel", "lo#", "##x", "more"], ("###",), "Hello"),  # split across tokens
        (["Hel", "lo", "#", "#", "#", "x"], ("###",), "Hello"),  # one character a token
        (["###", "x"], ("###",), ""),  # at the very start
        (["ab", "c"], ("bc",), "a"),
        (["x END y STOP z"], ("STOP", "END"), "x "),  # the earliest match wins, whichever string
        (["one, STO", "P", "END"], ("END", "STOP"), "one, "),
        ([b"a\xc3", b"\xa9!", b"b"], ("\u00e9!",), "a"),  # a stop string that starts in half a character
        (["line one\n", "\nline two"], ("\n\n",), "line one"),
        (["xab", "y"], ("aby", "b"), "xa"),  # the stop string that completes first wins
    ],
)
def test_a_stop_string_ends_the_text_before_it(parts: list[str | bytes], stop: tuple[str, ...], text: str) -> None:
    deltas, stopped = _run(parts, stop)
    assert stopped
    assert "".join(deltas) == text


@pytest.mark.parametrize(
    ("parts", "stop"),
    [
        (["ab#", "#c"], ("###",)),  # a partial match that never completes
        (["Hello", " wor", "ld"], ("xyz",)),
        (["a", "b", "##"], ("###",)),  # the text ends on the start of a stop string
    ],
)
def test_without_a_complete_stop_string_everything_is_released(parts: list[str | bytes], stop: tuple[str, ...]) -> None:
    deltas, stopped = _run(parts, stop)
    assert not stopped
    assert "".join(deltas) == "".join(p if isinstance(p, str) else p.decode() for p in parts)


def test_text_that_may_start_a_stop_string_is_held_back() -> None:
    deltas, stopped = _run(["ab", "#", "#", "#"], ("###",))
    assert stopped
    assert "".join(deltas) == "ab"
    assert all("#" not in delta for delta in deltas)


def test_special_tokens_are_skipped_in_text_but_named_in_token_text() -> None:
    decoder = FakeByteDecoder(_pieces(["<s>", "Hi", "</s>"]), special=frozenset({0, 2}))
    detokenizer = IncrementalDetokenizer(decoder, ())
    assert [detokenizer.add(i, final=i == 2) for i in range(3)] == ["", "Hi", ""]
    assert detokenizer.token_text(2) == "</s>"


def _random_case(rng: random.Random) -> tuple[list[bytes], tuple[str, ...]]:
    alphabet = ["a", "b", "#", "é", "€", "😀", " "]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))).encode()
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    stop = tuple("".join(rng.choice(alphabet[:4]) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3)))
    return pieces, stop


def _reference(pieces: list[bytes], stop: tuple[str, ...]) -> tuple[str, bool]:
    """Decode every prefix from scratch; the first that holds a stop string ends the text at its earliest match."""
    for end in range(1, len(pieces) + 1):
        text = b"".join(pieces[:end]).decode("utf-8", errors="replace")
        matches = [i for i in (text.find(s) for s in stop) if i >= 0]
        if matches:
            return text[: min(matches)], True
    return b"".join(pieces).decode(), False


def test_random_splits_and_stop_strings_match_a_one_shot_reference() -> None:
    rng = random.Random(1234)
    stopped_cases = 0
    for _ in range(400):
        pieces, stop = _random_case(rng)
        expected, matched = _reference(pieces, stop)

        detokenizer = IncrementalDetokenizer(FakeByteDecoder(pieces), stop)
        sent = ""
        for token_id in range(len(pieces)):
            sent += detokenizer.add(token_id, final=token_id == len(pieces) - 1)
            assert expected.startswith(sent), (pieces, stop)  # text once sent never changes
            if detokenizer.stopped:
                break
        assert sent == expected, (pieces, stop)
        assert detokenizer.stopped == matched, (pieces, stop)
        stopped_cases += matched
    assert 50 < stopped_cases < 350  # both kinds of case were exercised


def test_a_stop_string_before_min_tokens_does_not_end_the_text() -> None:
    pieces = _pieces(["ab", "STOP", "cd", "STOP", "ef"])
    detokenizer = IncrementalDetokenizer(FakeByteDecoder(pieces), ("STOP",))
    deltas = [detokenizer.add(i, final=False, stop_allowed=i >= 2) for i in range(4)]
    assert detokenizer.stopped
    assert "".join(deltas) == "abSTOPcd"


class CountingFakeDecoder(FakeByteDecoder):
    """A byte-level fake that records how many token ids each decode call was given."""

    def __init__(self, pieces: list[bytes]) -> None:
        super().__init__(pieces)
        self.ids_per_call: list[int] = []

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        self.ids_per_call.append(len(token_ids))
        return super().decode(token_ids, skip_special_tokens)


def _split_characters(text: str, rng: random.Random) -> list[bytes]:
    """Tokens of `text` as a byte-level tokenizer makes them: a character's bytes split over up to four
    tokens, the last of which may carry the next word with it."""
    pieces: list[bytes] = []
    for character in text:
        encoded = character.encode()
        if pieces and len(encoded) == 1 and len(pieces[-1]) < 4 and rng.random() < 0.5:
            pieces[-1] += encoded  # "\xb6ln": the end of one character, and whole ones after it
            continue
        cuts = sorted(rng.sample(range(1, len(encoded)), k=rng.randint(0, len(encoded) - 1)))
        pieces.extend(encoded[i:j] for i, j in zip([0, *cuts], [*cuts, len(encoded)], strict=True))
    return pieces


def test_each_token_decodes_a_window_of_bounded_size_however_long_the_answer() -> None:
    rng = random.Random(7)
    text = "".join(rng.choice(["a", " word", "é", "€", "😀", "東", "\n"]) for _ in range(3000))
    pieces = _split_characters(text, rng)
    decoder = CountingFakeDecoder(pieces)
    detokenizer = IncrementalDetokenizer(decoder, ("STOP",))
    sent = "".join(detokenizer.add(i, final=i == len(pieces) - 1) for i in range(len(pieces)))
    assert sent == text
    # The tokens since text last ended on a whole character, twice over at most: a character has
    # at most 4 bytes, so the window never holds more than 8 tokens.
    assert max(decoder.ids_per_call) <= 8
    assert len(decoder.ids_per_call) <= 2 * len(pieces)


_CORPUS = ["The quick brown fox jumps over the lazy dog.", "A language model predicts the next token.", "Hello, world!"]
_UNICODE = "Grüße aus Köln: 3 € für 🍎🍐, naïve café — 東京 ist weit.\n\tTabs  and  spaces; "


def _byte_level_bpe() -> Tokenizer:
    """GPT-2 style: trained on ASCII only, so every other character is split into byte tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer


def _metaspace_bpe() -> Tokenizer:
    """SentencePiece style: a word's token carries its leading space, which decoding drops at the start
    of a text, so a token decoded alone differs from the same token in context."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tokenizer.train_from_iterator([*_CORPUS, _UNICODE] * 4, trainer=trainer)
    return tokenizer


@pytest.fixture(scope="module", params=[_byte_level_bpe, _metaspace_bpe], ids=["byte-level", "metaspace"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return request.param()  # type: ignore[no-any-return]


def _answer_ids(tokenizer: Tokenizer, repeats: int) -> list[int]:
    """A long unicode-heavy answer with special tokens inside it and at its end."""
    special = [tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")]
    ids = tokenizer.encode(_UNICODE * repeats).ids
    return [*ids[:7], special[0], *ids[7:], special[1]]


def test_a_long_unicode_answer_streams_exactly_its_one_shot_decode(tokenizer: Tokenizer) -> None:
    ids = _answer_ids(tokenizer, repeats=60)
    detokenizer = IncrementalDetokenizer(tokenizer, ())
    deltas = [detokenizer.add(token_id, final=i == len(ids) - 1) for i, token_id in enumerate(ids)]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert all(REPLACEMENT not in delta for delta in deltas)


def test_a_stop_string_deep_in_a_long_answer_ends_the_one_shot_decode_there(tokenizer: Tokenizer) -> None:
    ids = _answer_ids(tokenizer, repeats=40)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    stop = "東京 ist"
    detokenizer = IncrementalDetokenizer(tokenizer, (stop, "never there"))
    sent = ""
    for i, token_id in enumerate(ids):
        if len(ids) // 2 < i:  # stop strings allowed only from the middle on, as min_tokens does
            sent += detokenizer.add(token_id, final=i == len(ids) - 1)
        else:
            sent += detokenizer.add(token_id, final=False, stop_allowed=False)
        if detokenizer.stopped:
            break
    middle = len(tokenizer.decode(ids[: len(ids) // 2 + 1], skip_special_tokens=True))
    assert detokenizer.stopped
    assert sent == full[: full.index(stop, middle - len(stop) + 1)]
