import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from loraplane.errors import InvalidArgument
from loraplane.proto import common_pb2, trainer_pb2
from loraplane.releases import ReleaseMode, TrialPlan
from loraplane.training import JobState
from trainer_svc.convert import job_to_proto, retrain_policy_change, spec_from_proto, spec_to_proto
from trainer_svc.jobs import Job
from trainer_svc.progress import PublishedAdapter
from trainer_svc.spec import DPO_LEARNING_RATE


def _spec(**overrides: object) -> trainer_pb2.JobSpec:
    spec = trainer_pb2.JobSpec(
        adapter_name="acme",
        training_data=trainer_pb2.Dataset(inline_jsonl='{"prompt": "a", "completion": "b"}'),
        method=trainer_pb2.METHOD_DORA,
        lora=trainer_pb2.LoraParameters(rank=8, target_modules=["q_proj", "v_proj"]),
        training=trainer_pb2.TrainingParameters(max_steps=30, learning_rate=1e-3),
        labels={"team": "support"},
    )
    for name, value in overrides.items():
        setattr(spec, name, value) if not hasattr(value, "CopyFrom") else getattr(spec, name).CopyFrom(value)
    return spec


def test_zero_fields_take_defaults_and_set_ones_survive_a_round_trip() -> None:
    spec = spec_from_proto(_spec())
    assert (spec.method, spec.lora.rank, spec.lora.alpha, spec.lora.target_modules) == (
        "dora",
        8,
        16.0,
        ["q_proj", "v_proj"],
    )
    assert (spec.training.max_steps, spec.training.batch_size, spec.training.learning_rate) == (30, 8, 1e-3)
    assert spec_from_proto(spec_to_proto(spec)) == spec


def test_prompt_format_defaults_to_auto_and_survives_a_round_trip() -> None:
    assert spec_from_proto(_spec()).prompt_format == "auto"
    for value, name in ((trainer_pb2.PROMPT_FORMAT_CHAT, "chat"), (trainer_pb2.PROMPT_FORMAT_RAW, "raw")):
        spec = spec_from_proto(_spec(prompt_format=value))
        assert spec.prompt_format == name
        assert spec_from_proto(spec_to_proto(spec)) == spec
    with pytest.raises(InvalidArgument) as info:
        spec_from_proto(_spec(prompt_format=99))
    assert info.value.field == "spec.prompt_format"


def test_early_stopping_is_on_unless_turned_off_explicitly() -> None:
    assert spec_from_proto(_spec()).training.early_stopping_patience == 3
    off = spec_from_proto(_spec(training=trainer_pb2.TrainingParameters(early_stopping_patience=0)))
    assert off.training.early_stopping_patience == 0
    assert spec_from_proto(spec_to_proto(off)) == off
    patient = trainer_pb2.TrainingParameters(early_stopping_patience=5, early_stopping_min_delta=0.05)
    assert spec_from_proto(_spec(training=patient)).training.early_stopping_patience == 5
    assert spec_from_proto(_spec(training=patient)).training.early_stopping_min_delta == 0.05


def test_min_delta_counts_any_fall_unless_set() -> None:
    assert spec_from_proto(_spec()).training.early_stopping_min_delta == 0
    strict = spec_from_proto(_spec(training=trainer_pb2.TrainingParameters(early_stopping_min_delta=0.01)))
    assert strict.training.early_stopping_min_delta == 0.01
    assert spec_from_proto(spec_to_proto(strict)) == strict


def test_out_of_range_parameter_names_its_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        spec_from_proto(_spec(lora=trainer_pb2.LoraParameters(rank=100000)))
    assert info.value.field == "spec.lora.rank"
    with pytest.raises(InvalidArgument) as info:
        spec_from_proto(_spec(training=trainer_pb2.TrainingParameters(validation_fraction=1.5)))
    assert info.value.field == "spec.training.validation_fraction"


def test_a_dpo_job_takes_its_beta_and_its_own_default_learning_rate() -> None:
    spec = spec_from_proto(_spec(method=trainer_pb2.METHOD_DPO, training=trainer_pb2.TrainingParameters()))
    assert (spec.method, spec.dpo.beta, spec.training.learning_rate) == ("dpo", 0.1, DPO_LEARNING_RATE)
    tuned = spec_from_proto(_spec(method=trainer_pb2.METHOD_DPO, dpo=trainer_pb2.DpoParameters(beta=0.5)))
    assert (tuned.dpo.beta, tuned.training.learning_rate) == (0.5, 1e-3)  # a rate the caller set is kept
    assert spec_from_proto(spec_to_proto(tuned)) == tuned
    assert spec_from_proto(_spec(training=trainer_pb2.TrainingParameters())).training.learning_rate == 2e-4
    with pytest.raises(InvalidArgument) as info:
        spec_from_proto(_spec(method=trainer_pb2.METHOD_DPO, dpo=trainer_pb2.DpoParameters(beta=-1)))
    assert info.value.field == "spec.dpo.beta"


def test_worker_resources_are_optional_and_an_explicit_zero_gpus_counts() -> None:
    assert not spec_from_proto(_spec()).resources.requested
    asked = spec_from_proto(_spec(resources=trainer_pb2.WorkerResources(cpu="500m", memory="16Gi", gpus=0)))
    assert (asked.resources.cpu, asked.resources.memory, asked.resources.gpus) == ("500m", "16Gi", 0)
    assert spec_from_proto(spec_to_proto(asked)) == asked
    for resources, field in (
        (trainer_pb2.WorkerResources(cpu="two"), "spec.resources.cpu"),
        (trainer_pb2.WorkerResources(memory="16 GB"), "spec.resources.memory"),
        (trainer_pb2.WorkerResources(gpus=99), "spec.resources.gpus"),
    ):
        with pytest.raises(InvalidArgument) as info:
            spec_from_proto(_spec(resources=resources))
        assert info.value.field == field


def test_missing_training_data_is_invalid() -> None:
    spec = _spec()
    spec.ClearField("training_data")
    with pytest.raises(InvalidArgument) as info:
        spec_from_proto(spec)
    assert info.value.field == "spec.training_data"


def test_captures_as_training_data_take_defaults_survive_a_round_trip_and_name_a_bad_figure() -> None:
    since = Timestamp(seconds=1_796_000_000)
    captures = trainer_pb2.CaptureSource(adapter="acme", since=since, good_score=0.9)
    spec = spec_from_proto(_spec(training_data=trainer_pb2.Dataset(captures=captures), parent="acme@v1"))
    source = spec.training_data.captures
    assert source is not None and (source.adapter, source.good_score, source.held_out_share) == ("acme", 0.9, 0.2)
    assert source.since is not None and source.since.timestamp() == 1_796_000_000
    assert spec.parent == "acme@v1" and spec_from_proto(spec_to_proto(spec)) == spec
    bad = trainer_pb2.CaptureSource(adapter="acme", held_out_share=1.0)
    with pytest.raises(InvalidArgument) as info:
        spec_from_proto(_spec(training_data=trainer_pb2.Dataset(captures=bad)))
    assert info.value.field == "spec.training_data.captures.held_out_share"


def test_job_to_proto_carries_outcome_and_hides_inline_data() -> None:
    job = Job(
        id="j1",
        spec=spec_from_proto(_spec()).without_inline_text(),
        state=JobState.SUCCEEDED,
        metrics={"validation_loss": 0.5, "train_examples": 9.0, "stopped_early": 1.0, "unlisted": 2.0},
        adapter=PublishedAdapter(name="acme", version=2, uri="file:///s/adapters/acme/v2", manifest_sha256="ab"),
    )
    message = job_to_proto(job)
    assert message.state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert (message.metrics.validation_loss, message.metrics.train_examples, message.metrics.stopped_early) == (
        0.5,
        9,
        True,
    )
    assert (message.adapter.name, message.adapter.version) == ("acme", 2)
    assert message.spec.training_data.inline_jsonl.startswith("<inline JSONL, sha256:")
    assert message.created_at.seconds > 0 and not message.HasField("finished_at")
    assert not message.metrics.HasField("gate_passed"), "no gate without a parent"


def test_a_continued_jobs_gate_and_capture_counts_reach_its_metrics() -> None:
    figures = {"gate_passed": 0.0, "gate_new_traffic_parent": 0.25, "gate_new_traffic_candidate": 0.75}
    job = Job(id="j1", spec=spec_from_proto(_spec()), metrics={**figures, "capture_corrected": 40.0})
    metrics = job_to_proto(job).metrics
    assert metrics.HasField("gate_passed") and not metrics.gate_passed
    assert (metrics.gate_new_traffic_parent, metrics.gate_new_traffic_candidate) == (0.25, 0.75)
    assert metrics.capture_corrected == 40 and not metrics.HasField("gate_parent_task_parent")


def test_replay_is_a_tenth_unless_set_and_an_explicit_zero_turns_it_off() -> None:
    assert spec_from_proto(_spec()).training.replay_fraction == 0.1
    off = spec_from_proto(_spec(training=trainer_pb2.TrainingParameters(replay_fraction=0)))
    assert off.training.replay_fraction == 0
    assert spec_from_proto(spec_to_proto(off)) == off


def test_a_release_on_success_takes_its_defaults_and_survives_a_round_trip() -> None:
    assert spec_from_proto(_spec()).release is None
    shadow = spec_from_proto(_spec(release=trainer_pb2.ReleaseOnSuccess(mode=common_pb2.RELEASE_MODE_SHADOW)))
    assert shadow.release == TrialPlan(mode=ReleaseMode.SHADOW, canary_share=0.1)
    canary = spec_from_proto(_spec(release=trainer_pb2.ReleaseOnSuccess(canary_share=0.25)))
    assert canary.release == TrialPlan(mode=ReleaseMode.CANARY, canary_share=0.25)
    assert spec_from_proto(spec_to_proto(canary)) == canary


@pytest.mark.parametrize(
    ("release", "field"),
    [
        (trainer_pb2.ReleaseOnSuccess(canary_share=1.5), "spec.release.canary_share"),
        (trainer_pb2.ReleaseOnSuccess(mode=9), "spec.release.mode"),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_release_on_success_is_refused_naming_its_field(
    release: trainer_pb2.ReleaseOnSuccess, field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        spec_from_proto(_spec(release=release))
    assert info.value.field == field


def test_a_retraining_policy_change_keeps_what_it_leaves_unset_and_takes_its_training() -> None:
    training = trainer_pb2.TrainingParameters(max_steps=24, learning_rate=1e-2, replay_fraction=0)
    request = trainer_pb2.UpdateRetrainPolicyRequest(adapter="acme", enabled=True, canary_share=0.5, training=training)
    name, change = retrain_policy_change(request)
    assert name == "acme" and change.cooldown_seconds is None and change.canary_share == 0.5
    assert change.training is not None
    assert (change.training.max_steps, change.training.learning_rate, change.training.replay_fraction) == (24, 1e-2, 0)
    bad = trainer_pb2.UpdateRetrainPolicyRequest(
        adapter="acme", training=trainer_pb2.TrainingParameters(batch_size=9999)
    )
    with pytest.raises(InvalidArgument) as info:
        retrain_policy_change(bad)
    assert info.value.field == "training.batch_size"
