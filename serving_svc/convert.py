"""Translation between the Inference API's protobuf messages and the engine's value objects, in one place.

Every check on request values lives here and raises InvalidArgument naming the field by its
path in the request, so a client can point at what to fix.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from loraplane import wire
from loraplane.captures import Capture, CapturePolicy, CapturePolicyChange
from loraplane.drift import Profile
from loraplane.errors import InvalidArgument
from loraplane.names import AdapterSpec, parse_adapter_spec, whole_adapter_name
from loraplane.proto import common_pb2, serving_pb2
from loraplane.releases import ReleaseAction, ReleaseChange, ReleaseRecord, ReleaseState
from serving_svc.adapters import AdapterStatus, ResolvedAdapter
from serving_svc.drift_monitor import AdapterDrift
from serving_svc.engines.base import (
    ChatMessage,
    Prompt,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
    Usage,
)
from serving_svc.inference import Completion, GenerationChunk, GenerationInput, ModelInfo
from serving_svc.release_analysis import Check, ReleaseReport, VersionFigures

CHAT_ROLES = frozenset({"system", "user", "assistant"})


def adapter_spec(text: str) -> AdapterSpec | None:
    """The adapter a request names as "name" or "name@vN"; "" (None) is the base model."""
    return parse_adapter_spec(text, field="adapter") if text else None


def required_adapter_spec(text: str) -> AdapterSpec:
    if not text:
        raise InvalidArgument("name the adapter as name or name@vN", field="adapter")
    return parse_adapter_spec(text, field="adapter")


def prompt(request: serving_pb2.GenerateRequest | serving_pb2.TokenizeRequest) -> Prompt:
    """The raw prompt or the chat turns; InvalidArgument when neither is given or a turn is malformed."""
    kind = request.WhichOneof("input")
    if kind is None:
        raise InvalidArgument("give the input as prompt (raw text) or messages (chat turns)", field="prompt")
    if kind == "prompt":
        return request.prompt
    turns = request.messages.messages
    if not turns:
        raise InvalidArgument("messages holds no chat turns", field="messages.messages")
    for index, turn in enumerate(turns):
        if turn.role not in CHAT_ROLES:
            raise InvalidArgument(
                f"role {turn.role!r} is not one of {', '.join(sorted(CHAT_ROLES))}",
                field=f"messages.messages[{index}].role",
            )
    return [ChatMessage(turn.role, turn.content) for turn in turns]


def input_field(request: serving_pb2.GenerateRequest | serving_pb2.TokenizeRequest) -> str:
    return request.WhichOneof("input") or "prompt"


def sampling(params: serving_pb2.SamplingParameters) -> SamplingOptions:
    """Validated sampling options; unset fields take the documented defaults (max_tokens 0: the replica's)."""
    temperature = params.temperature if params.HasField("temperature") else 1.0
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidArgument(f"temperature must be >= 0 (0 = greedy), got {temperature}", field="sampling.temperature")
    top_p = params.top_p if params.HasField("top_p") else 1.0
    if not (0 < top_p <= 1):
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}", field="sampling.top_p")
    top_k = params.top_k if params.HasField("top_k") else 0
    if top_k < 0:
        raise InvalidArgument(f"top_k must be >= 0 (0 = no cut), got {top_k}", field="sampling.top_k")
    if any(not s for s in params.stop):
        raise InvalidArgument("stop strings must not be empty", field="sampling.stop")
    return SamplingOptions(
        max_tokens=params.max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=tuple(params.stop),
        seed=params.seed if params.HasField("seed") else None,
        logprobs=params.logprobs,
        min_tokens=params.min_tokens,
        ignore_eos=params.ignore_eos,
        structured=structured_output(params),
    )


def structured_output(params: serving_pb2.SamplingParameters) -> StructuredOutput | None:
    kind = params.WhichOneof("structured_output")
    if kind is None:
        return None
    if kind == "json_schema":
        return StructuredOutput.from_json_schema(params.json_schema, field="sampling.json_schema")
    if kind == "json_object":
        return StructuredOutput("json_object") if params.json_object else None
    if kind == "regex":
        return StructuredOutput.from_regex(params.regex, field="sampling.regex")
    return StructuredOutput.from_choices(list(params.choice.choices), field="sampling.choice")


def generation_input(request: serving_pb2.GenerateRequest) -> GenerationInput:
    return GenerationInput(
        adapter=adapter_spec(request.adapter),
        prompt=prompt(request),
        sampling=sampling(request.sampling),
        input_field=input_field(request),
        user=request.user,
    )


def generate_response(completion: Completion) -> serving_pb2.GenerateResponse:
    response = serving_pb2.GenerateResponse(
        request_id=completion.request_id,
        text=completion.text,
        finish_reason=wire.FINISH_REASON.encode_optional(completion.finish_reason),
        logprobs=logprobs(tuple(completion.logprobs)),
    )
    if completion.usage is not None:
        response.usage.CopyFrom(usage(completion.usage))
    if completion.adapter is not None:
        response.adapter.CopyFrom(adapter_ref(completion.adapter))
    return response


def stream_response(chunk: GenerationChunk, *, first: bool) -> serving_pb2.GenerateStreamResponse:
    """One stream message: request id and adapter on the first, finish reason and usage on the last."""
    delta = chunk.delta
    message = serving_pb2.GenerateStreamResponse(delta=delta.text, logprobs=logprobs(delta.logprobs))
    if first:
        message.request_id = chunk.request_id
        if chunk.adapter is not None:
            message.adapter.CopyFrom(adapter_ref(chunk.adapter))
    if delta.usage is not None:
        message.finish_reason = wire.FINISH_REASON.encode_optional(delta.finish_reason)
        message.usage.CopyFrom(usage(delta.usage))
    return message


def usage(value: Usage) -> serving_pb2.Usage:
    return serving_pb2.Usage(prompt_tokens=value.prompt_tokens, completion_tokens=value.completion_tokens)


def model_info(info: ModelInfo) -> serving_pb2.ModelInfoResponse:
    return serving_pb2.ModelInfoResponse(
        base_model=info.base_model,
        base_model_fingerprint=info.base_model_fingerprint,
        engine=info.engine,
        max_model_length=info.max_model_len,
        max_loaded_adapters=info.max_loaded_adapters,
        max_lora_rank=info.max_lora_rank,
        max_cpu_adapters=info.max_cpu_adapters,
    )


def adapter_ref(adapter: ResolvedAdapter) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(
        name=adapter.manifest.name,
        version=adapter.manifest.version,
        uri=adapter.uri,
        manifest_sha256=adapter.manifest_sha256,
    )


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def adapter_info(status: AdapterStatus) -> serving_pb2.AdapterInfo:
    adapter, manifest = status.adapter, status.adapter.manifest
    created_at = Timestamp()
    created_at.FromDatetime(manifest.created_at)
    info = serving_pb2.AdapterInfo(
        ref=adapter_ref(adapter),
        base_model=manifest.base_model.name,
        method=manifest.method,
        rank=manifest.rank,
        created_at=created_at,
        loaded=status.tier == "engine",
        prompt_format=manifest.prompt_format,
        tier=wire.ADAPTER_TIER.encode(status.tier),
        size_bytes=status.size_bytes,
        requests=status.usage.requests,
        pinned=status.pinned,
    )
    if status.usage.last_used_at is not None:
        info.last_used_at.CopyFrom(_timestamp(status.usage.last_used_at))
    return info


def logprobs(entries: tuple[TokenLogprob, ...]) -> list[serving_pb2.TokenLogprob]:
    return [serving_pb2.TokenLogprob(token_id=e.token_id, token=e.token, logprob=e.logprob) for e in entries]


_FEEDBACK_LABEL_SCORES = {serving_pb2.FEEDBACK_LABEL_GOOD: 1.0, serving_pb2.FEEDBACK_LABEL_BAD: 0.0}


def feedback_score(request: serving_pb2.RecordFeedbackRequest) -> float:
    """The request's outcome as a score in [0, 1]: the score itself, or 1 for GOOD and 0 for BAD."""
    if not request.request_id:
        raise InvalidArgument("name the answer by the request_id its Generate response carried", field="request_id")
    kind = request.WhichOneof("outcome")
    if kind == "score":
        return request.score  # its range is the inference service's to check, whichever front sent it
    if kind == "label" and request.label in _FEEDBACK_LABEL_SCORES:
        return _FEEDBACK_LABEL_SCORES[request.label]
    raise InvalidArgument("give the outcome as score (0 to 1) or label (GOOD or BAD)", field="score")


def feedback_correction(request: serving_pb2.RecordFeedbackRequest) -> str | None:
    return request.correction if request.HasField("correction") else None


def _profile_summary(
    profile: Profile, *, output_confidence: float | None, prompt_surprise: float | None, form_share: float | None
) -> serving_pb2.ProfileSummary:
    return serving_pb2.ProfileSummary(
        sample_count=profile.sample_count,
        output_confidence=output_confidence,
        prompt_surprise=prompt_surprise,
        prompt_length_histogram=profile.prompt_length_histogram(),
        response_length_histogram=profile.response_length_histogram(),
        answer_form_share=form_share,
        prompt_count=len(profile.prompts),
    )


def adapter_stats(entry: AdapterDrift) -> serving_pb2.AdapterStats:
    policy, report = entry.policy, entry.report
    statistics = [
        serving_pb2.DriftStatisticValue(
            statistic=statistic.value,
            value=reading.value,
            threshold=policy.verdicts.thresholds.get(statistic),
            over=reading.over,
            p_value=reading.p_value,
            samples=reading.samples,
        )
        for statistic, reading in report.readings.items()
    ]
    return serving_pb2.AdapterStats(
        adapter=entry.adapter,
        version=entry.version,
        reference=_profile_summary(
            entry.reference,
            output_confidence=report.reference_output_confidence,
            prompt_surprise=report.reference_prompt_surprise,
            form_share=report.reference_form_share,
        ),
        live=_profile_summary(
            entry.live,
            output_confidence=report.output_confidence,
            prompt_surprise=report.prompt_surprise,
            form_share=report.form_share,
        ),
        statistics=statistics,
        min_samples=policy.min_samples,
        feedback_count=entry.feedback.count,
        feedback_score=entry.feedback.mean_score,
        feedback_score_floor=policy.feedback_score_floor,
        requests_total=entry.requests_total,
        false_alarm_rate=policy.verdicts.false_alarm_rate,
        p_value_threshold=report.p_value_threshold,
        answer_form=report.form or "",
    )


DEFAULT_RELEASE_HISTORY = 20
MAX_RELEASE_HISTORY = 1000


def history_limit(requested: int) -> int:
    """The records a GetRelease returns: 0 takes the default, and no call reads more than the maximum."""
    return min(requested or DEFAULT_RELEASE_HISTORY, MAX_RELEASE_HISTORY)


DEFAULT_CANARY_SHARE = 0.1


def release_name(text: str) -> str:
    return whole_adapter_name(text, "release")


def capture_policy(name: str, policy: CapturePolicy) -> serving_pb2.CapturePolicy:
    message = serving_pb2.CapturePolicy(
        adapter=name,
        enabled=policy.enabled,
        sample_share=policy.sample_share,
        retention_days=policy.retention_days,
        retention_bytes=policy.retention_bytes,
        actor=policy.actor,
    )
    if policy.at is not None:
        message.updated_at.FromDatetime(policy.at)
    return message


def capture_policy_change(request: serving_pb2.UpdateCapturePolicyRequest) -> tuple[str, CapturePolicyChange]:
    """The adapter and the change an UpdateCapturePolicy asks for; unset figures stay as the policy has them."""
    name = whole_adapter_name(request.adapter, "capture policy")
    figures = {
        field: getattr(request, field)
        for field in ("sample_share", "retention_days", "retention_bytes")
        if request.HasField(field)
    }
    return name, CapturePolicyChange(enabled=request.enabled, **figures)


def captures_since(request: serving_pb2.ExportCapturesRequest) -> tuple[str, datetime | None]:
    name = whole_adapter_name(request.adapter, "captures")
    return name, request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None


def captured_request(capture: Capture) -> serving_pb2.CapturedRequest:
    request, feedback = capture.request, capture.feedback
    message = serving_pb2.CapturedRequest(
        request_id=request.request_id,
        version=request.version,
        answer=request.answer,
        finish_reason=request.finish_reason,
    )
    message.time.FromDatetime(request.at)
    if isinstance(request.prompt, str):
        message.prompt = request.prompt
    else:
        turns = [common_pb2.ChatMessage(role=turn.role, content=turn.content) for turn in request.prompt]
        message.messages.CopyFrom(serving_pb2.ChatMessages(messages=turns))
    if feedback is not None:
        message.feedback_score = feedback.score
        if feedback.correction is not None:
            message.correction = feedback.correction
    return message


def release_change(request: serving_pb2.UpdateReleaseRequest) -> tuple[str, ReleaseChange]:
    """The adapter name and the change an UpdateRelease asks for, each value checked against its field."""
    name = release_name(request.adapter)
    if request.action == serving_pb2.RELEASE_ACTION_UNSPECIFIED:
        actions = ", ".join(value.name for value in wire.RELEASE_ACTION.descriptor.values if value.number)
        raise InvalidArgument(f"say what to do: one of {actions}", field="action")
    action = wire.RELEASE_ACTION.parse(request.action, field="action")
    if action is ReleaseAction.START and not request.candidate_version:
        raise InvalidArgument("name the version to try as the candidate", field="candidate_version")
    share = request.canary_share if request.HasField("canary_share") else DEFAULT_CANARY_SHARE
    if not (math.isfinite(share) and 0.0 <= share <= 1.0):
        raise InvalidArgument(f"canary_share must be in [0, 1], got {share}", field="canary_share")
    return name, ReleaseChange(
        action=action,
        candidate=request.candidate_version or None,
        mode=wire.RELEASE_MODE.parse(request.mode, field="mode"),
        canary_share=share,
        stable=request.stable_version or None,
        expected_candidate=request.expected_candidate_version or None,
    )


def release_state(state: ReleaseState) -> serving_pb2.ReleaseState:
    return serving_pb2.ReleaseState(
        stable_version=state.stable,
        candidate_version=state.candidate or 0,
        mode=wire.RELEASE_MODE.encode_optional(state.mode),
        canary_share=state.canary_share,
        paused=state.paused,
        previous_stable_version=state.previous_stable or 0,
        trial=state.trial or 0,
    )


def release_record(record: ReleaseRecord) -> serving_pb2.ReleaseRecord:
    message = serving_pb2.ReleaseRecord(
        sequence=record.sequence,
        action=wire.RELEASE_ACTION.encode(record.action),
        state=release_state(record.state),
        actor=record.actor,
        reason=record.reason,
        figures=record.figures,
    )
    message.time.FromDatetime(record.at)
    return message


def version_figures(figures: VersionFigures) -> serving_pb2.VersionFigures:
    return serving_pb2.VersionFigures(
        version=figures.version,
        requests=figures.requests,
        errors=figures.errors,
        values={guardrail.value: value for guardrail, value in figures.values.items() if value is not None},
        samples={guardrail.value: count for guardrail, count in figures.samples.items()},
    )


def guardrail_check(check: Check) -> serving_pb2.GuardrailCheck:
    return serving_pb2.GuardrailCheck(
        guardrail=check.guardrail.value,
        stable=check.stable,
        candidate=check.candidate,
        margin=check.margin,
        judged=check.judged,
        excess=check.excess,
        worse=check.worse,
    )


def release(report: ReleaseReport) -> serving_pb2.Release:
    view, verdict = report.view, report.verdict
    message = serving_pb2.Release(
        adapter=view.adapter, history=[release_record(record) for record in view.history], stale=view.stale
    )
    if view.current is not None:
        message.state.CopyFrom(release_state(view.current.state))
    if verdict is not None:
        message.versions.extend(version_figures(figures) for figures in (verdict.stable, verdict.candidate))
        message.checks.extend(guardrail_check(check) for check in verdict.checks)
        message.verdict = verdict.describe()
    return message
