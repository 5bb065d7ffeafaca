"""Incremental detokenization with stop strings, for engines that decode tokens themselves.

Each token is decoded within a short window of the answer, never the whole answer, as TGI's
`decode_token(all_input_ids, prefix_offset, read_offset)` does: the window's text before the new
token is decoded too, and what the new token adds is the difference. A tokenizer's decoding can
depend on the tokens before (a leading space dropped at the start of a text, bytes that only make
a character together), so the window starts at the tokens that gave text last time; it moves on
once the new tokens give whole characters, and stays put while a character is split across tokens
(decoded as U+FFFD) or the new tokens give no text (special tokens). A window thus holds the
tokens since text last ended on a whole character: a few tokens in ordinary text, however long the
answer grows (a run of tokens that each end inside a character keeps it growing until one ends whole).

Streaming text must never change once sent, so a step's text is held back while it could still
be part of a stop string or ends in half a character; the final step releases the rest. A stop
string ends the answer and is not part of it, as in vLLM.
"""

from __future__ import annotations

from typing import Protocol

_INCOMPLETE = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class _Window:
    """The tokens decoded together with the next one: those from the prefix offset on, of which the
    first `read` are already turned into text."""

    def __init__(self, decoder: Decoder) -> None:
        self._decoder = decoder
        self._token_ids: list[int] = []
        self._read = 0
        self._read_text = ""
        """The window's first `read` tokens decoded."""
        self.incomplete = ""
        """Text of the tokens past `read` not taken yet: it ends in half a character (U+FFFD), or is empty."""

    def add(self, token_id: int) -> str:
        """Append a token; the text it completes (with `incomplete` before it), or "" while there is none."""
        self._token_ids.append(token_id)
        text = self._decode(self._token_ids)
        new = text[len(self._read_text) :]
        if text.endswith(_INCOMPLETE) or not new:
            # Half a character, or no text at all (a special token): the window keeps its context, so
            # that the next token is decoded after text, as in the whole answer.
            self.incomplete = new
            return ""
        # The tokens just read are the next window's context.
        self._token_ids = self._token_ids[self._read :]
        self._read = len(self._token_ids)
        self._read_text = self._decode(self._token_ids)
        self.incomplete = ""
        return new

    def _decode(self, token_ids: list[int]) -> str:
        return self._decoder.decode(token_ids, skip_special_tokens=True)


class IncrementalDetokenizer:
    def __init__(self, decoder: Decoder, stop: tuple[str, ...]) -> None:
        self._decoder = decoder
        self._window = _Window(decoder)
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        # Positions are in the whole answer's text; only its tail is kept: the last `hold` characters
        # sent (where a stop string may begin) and everything not sent yet.
        self._tail = ""
        self._tail_start = 0
        self._sent = 0
        self._stops_end_after = 0
        self.stopped = False
        """A stop string appeared; the text ends before it."""

    def token_text(self, token_id: int) -> str:
        """One token's own text, special tokens included (for log-probabilities)."""
        return self._decoder.decode([token_id], skip_special_tokens=False)

    def add(self, token_id: int, *, final: bool, stop_allowed: bool = True) -> str:
        """Append one generated token; the text that can be sent now (all that is left when final).

        While `stop_allowed` is false (min_tokens not reached yet) stop strings do not end the text.
        """
        self._tail += self._window.add(token_id)
        text = self._tail + self._window.incomplete  # the answer's text from `_tail_start` on
        if not stop_allowed:
            self._stops_end_after = self._tail_start + len(text)
        elif self._stop and (match := self._first_stop(text)) is not None:
            self.stopped = True
            text = text[:match]
            final = True
        end = len(text) if final else len(text.rstrip(_INCOMPLETE)) - self._hold
        sent = self._sent - self._tail_start
        if end <= sent:
            return ""
        delta = text[sent:end]
        self._sent = self._tail_start + end
        # Text sent out of `incomplete` (whole characters before a split one) stays in the tail until
        # the window has read it.
        kept_from = max(self._tail_start, min(self._sent - self._hold, self._tail_start + len(self._tail)))
        self._tail = self._tail[kept_from - self._tail_start :]
        self._tail_start = kept_from
        return delta

    def _first_stop(self, text: str) -> int | None:
        """Where the earliest stop string in `text` (the tail) begins, or None.

        Only the unsent text plus a stop string's length of context can hold a new match, and a
        match must end after the text generated before stop strings were allowed.
        """
        matches = []
        for stop in self._stop:
            start = max(self._sent - self._hold, self._stops_end_after - len(stop) + 1, self._tail_start)
            if (found := text.find(stop, start - self._tail_start)) >= 0:
                matches.append(found)
        return min(matches, default=None)
