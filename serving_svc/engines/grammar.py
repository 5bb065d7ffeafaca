"""Structured output on the transformers engine: xgrammar's token masks, the library vLLM uses.

A request's JSON schema, regular expression or list of choices is compiled once per distinct
spec (xgrammar caches compiled grammars) into a grammar over this tokenizer's vocabulary. Each
constrained row then has a matcher: before the row's next token is chosen, every token that
cannot continue a valid answer is masked out of its logits; the chosen token advances the
matcher. The end tokens are allowed exactly when the answer is complete, so a finished answer
ends there. JSON comes compact (no whitespace between tokens), as vLLM's `disable_any_whitespace`
makes it: a small model allowed free whitespace can fill max_tokens with it.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import xgrammar as xgr

from loraplane.errors import InvalidArgument
from serving_svc.engines.base import StructuredOutput


def grammar_for(structured: StructuredOutput) -> xgr.Grammar:
    """The grammar of a structured-output spec, independent of any tokenizer; InvalidArgument naming
    the field when it does not make one. The vLLM engine calls it to check a spec before vLLM sees it."""
    spec = structured.spec
    try:
        if structured.kind in ("json_schema", "json_object"):
            schema = str(spec) if structured.kind == "json_schema" else '{"type": "object"}'
            return xgr.Grammar.from_json_schema(schema, any_whitespace=False)
        if structured.kind == "regex":
            return xgr.Grammar.from_regex(str(spec))
        # choice: one rule, the alternatives, each a JSON-escaped literal
        return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(choice) for choice in spec))
    except (RuntimeError, ValueError) as exc:
        message = f"the {structured.kind} does not make a grammar: {str(exc).strip()}"
        raise InvalidArgument(message, field=_FIELDS[structured.kind]) from None


_FIELDS = {
    "json_schema": "sampling.json_schema",
    "json_object": "sampling.json_object",
    "regex": "sampling.regex",
    "choice": "sampling.choice",
}


class Grammars:
    """Compiles structured-output specs for one tokenizer; safe to call from worker threads."""

    def __init__(self, tokenizer: Any, vocab_size: int, end_token_ids: list[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=end_token_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)
        self._vocab_size = vocab_size

    def constraint(self, structured: StructuredOutput) -> GrammarConstraint:
        """A fresh matcher for one request; InvalidArgument when the spec does not make a grammar."""
        compiled = self._compiler.compile_grammar(grammar_for(structured))
        return GrammarConstraint(xgr.GrammarMatcher(compiled), self._vocab_size)


class GrammarConstraint:
    """One row's grammar state, used on the engine thread only."""

    def __init__(self, matcher: xgr.GrammarMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits ([1, vocabulary]) of every token the grammar does not allow next to -inf."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits, self._bitmask)

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise RuntimeError(f"token {token} was chosen against the grammar")
