"""Incremental detokenization with stop strings, for engines that decode tokens themselves.

Streaming text must never change once sent, so a step's text is held back while it could still
be part of a stop string or ends in half a UTF-8 character (decoded as U+FFFD); the final step
releases the rest. A stop string ends the answer and is not part of it, as in vLLM.
"""

from __future__ import annotations

from typing import Protocol

_INCOMPLETE = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, decoder: Decoder, stop: tuple[str, ...]) -> None:
        self._decoder = decoder
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._token_ids: list[int] = []
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
        self._token_ids.append(token_id)
        text = self._decoder.decode(self._token_ids, skip_special_tokens=True)
        if not stop_allowed:
            self._stops_end_after = len(text)
        elif self._stop:
            # Only the unsent tail (plus a stop string's length of context) can hold a new match, and
            # a match must end after the text generated before stop strings were allowed.
            start = max(0, self._sent - self._hold)
            found = (text.find(s, max(start, self._stops_end_after - len(s) + 1)) for s in self._stop)
            matches = [i for i in found if i >= 0]
            if matches:
                self.stopped = True
                text = text[: min(matches)]
                final = True
        end = len(text) if final else len(text.rstrip(_INCOMPLETE)) - self._hold
        if end <= self._sent:
            return ""
        delta, self._sent = text[self._sent : end], end
        return delta
