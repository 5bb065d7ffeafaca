"""Redaction of what users wrote, before a captured request leaves the serving process.

The default patterns replace what most often identifies a person or opens a door, each by a marker
that says what was there (`[email]`), so a dataset built from captures keeps the sentence's shape:

- `secret`: API keys and tokens (`sk-...`, `ghp_...`, `xoxb-...`, `AKIA...`, loraplane's own `lp_...`), and
  any run of 32 or more characters that mixes letters and digits, which is how generated keys look;
- `email`: e-mail addresses;
- `phone`: phone numbers written with separators (`+1 415 555 0100`, `(415) 555-0100`, `555-123-4567`);
  a date such as `2024-03-15` is not one;
- `digits`: runs of 9 or more digits (card, account and phone numbers written without separators).

An operator adds patterns of their own (a name and a regular expression, replaced by `[name]`) and may
name a function `module:function` that takes the text and returns it redacted, run after the patterns.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping

from loraplane.errors import InvalidArgument

DEFAULT_PATTERNS: Mapping[str, str] = {
    "secret": r"\b(?:sk|pk|rk|lp|ghp|gho|ghs|xox[abprs])[-_][A-Za-z0-9_-]{12,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|(?<![\w-])(?P<run>[A-Za-z0-9_-]{32,})(?![\w-])",
    "email": r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone": r"(?<![\w-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}(?![\w-])",
    "digits": r"(?<!\d)\d{9,}",
}
"""Applied in this order, each match replaced by `[name]`. Every pattern starts only where its run starts
(a lookbehind), so matching takes time linear in the text whatever a caller sends. A `run` of 32 or more
letters and digits counts as a secret only when it mixes both (a long word or number is left)."""


def _marker(name: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        run = match.groupdict().get("run")
        if run is not None and not (any(c.isdigit() for c in run) and any(c.isalpha() for c in run)):
            return match.group(0)
        return f"[{name}]"

    return replace


class Redactor:
    """Replaces what the patterns match, then runs the operator's hook, if any."""

    def __init__(self, extra_patterns: Mapping[str, str] | None = None, hook: str = "") -> None:
        patterns = {**DEFAULT_PATTERNS, **(extra_patterns or {})}
        self._patterns = [(_marker(name), _compiled(name, pattern)) for name, pattern in patterns.items()]
        self._hook = _imported_hook(hook) if hook else None

    def __call__(self, text: str) -> str:
        for marker, pattern in self._patterns:
            text = pattern.sub(marker, text)
        if self._hook is not None:
            text = self._hook(text)
        return text


def _compiled(name: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidArgument(f"redaction pattern {name!r} is not a regular expression: {exc}") from None


def _imported_hook(reference: str) -> Callable[[str], str]:
    """The function `module:function` names; InvalidArgument saying what is wrong with the name."""
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise InvalidArgument(f"the redaction hook {reference!r} must be written module:function")
    try:
        hook = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgument(f"the redaction hook {reference!r} cannot be imported: {exc}") from None
    if not callable(hook):
        raise InvalidArgument(f"the redaction hook {reference!r} is not a function")
    return hook  # type: ignore[no-any-return]
