"""What the inference service and the shadow runner share about one engine request: the prompt as the
adapter was trained, the engine request with the drift measures it asks for, and the answer's trace
that drift records once it ends."""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplane.drift import Sample
from serving_svc.adapters import AdapterManager, ResolvedAdapter
from serving_svc.drift_monitor import DriftMonitor
from serving_svc.engines.base import (
    ChatMessage,
    Engine,
    GenerationDelta,
    GenerationRequest,
    Prompt,
    SamplingOptions,
)


def as_trained(prompt: Prompt, adapter: ResolvedAdapter | None) -> Prompt:
    """The prompt in the format the adapter was trained in: a plain prompt to an adapter trained in
    chat format becomes the user turn of the chat template, as its training examples were. Chat
    messages stay messages, and the base model takes either as sent."""
    if isinstance(prompt, str) and adapter is not None and adapter.manifest.prompt_format == "chat":
        return [ChatMessage(role="user", content=prompt)]
    return prompt


def engine_request(
    engine: Engine,
    drift: DriftMonitor | None,
    request_id: str,
    token_ids: list[int],
    sampling: SamplingOptions,
    adapter: ResolvedAdapter | None,
) -> GenerationRequest:
    """The engine request, asking for the prompt measures drift takes of an adapter's requests."""
    profiled = drift is not None and adapter is not None  # the base model has no training profile
    return GenerationRequest(
        request_id=request_id,
        prompt_token_ids=tuple(token_ids),
        sampling=sampling,
        adapter_key=adapter.key if adapter else None,
        score_prompt=profiled and engine.scores_prompts and drift is not None and drift.wants_prompt_score(),
        embed_prompt=profiled and engine.embeds_prompts,
    )


@dataclass
class AnswerTrace:
    """What drift needs of an answer as its deltas arrive: its tokens, their log-probability and its text."""

    token_ids: list[int] = field(default_factory=list)
    logprob: float | None = 0.0
    """None once a delta came without log-probabilities."""
    texts: list[str] = field(default_factory=list)

    def add(self, delta: GenerationDelta) -> None:
        """A delta's text, and its tokens with their log-probability where it carries any."""
        self.texts.append(delta.text)
        if not delta.token_ids:
            return
        self.token_ids.extend(delta.token_ids)
        if self.logprob is not None and delta.token_logprob_sum is not None:
            self.logprob += delta.token_logprob_sum
        else:
            self.logprob = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def sample(self, prompt_token_ids: tuple[int, ...], last: GenerationDelta) -> Sample:
        """The request as drift sees it, once `last` (the delta with the finish reason) has come."""
        return Sample(
            prompt_token_ids,
            tuple(self.token_ids),
            self.logprob,
            last.prompt_logprob,
            self.text,
            truncated=last.finish_reason == "length",
            prompt_embedding=last.prompt_embedding,
        )


def record_drift(
    drift: DriftMonitor | None,
    adapters: AdapterManager,
    adapter: ResolvedAdapter | None,
    generation: GenerationRequest,
    answer: AnswerTrace,
    last: GenerationDelta,
) -> None:
    """Hand an adapter's answered request to the drift window of its version."""
    if drift is None or adapter is None:
        return
    manifest = adapter.manifest
    sample = answer.sample(generation.prompt_token_ids, last)
    drift.record(generation.request_id, manifest.name, manifest.version, adapters.drift_profile(adapter), sample)
