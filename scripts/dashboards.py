"""Generate loraplane's Grafana dashboards (training, serving, drift, releases) with grafana-foundation-sdk.

The JSON under k8s/monitoring/dashboards/ is generated: edit this file, then run
`python scripts/dashboards.py` to rewrite it (`--check` only compares). Dashboards as code keep
every panel's PromQL next to the metric contract in review, give every dashboard the same
variables, units and layout rules, and let tests/unit/test_dashboards.py prove that the committed
JSON is what this code builds, and an end-to-end test run each panel's query against Prometheus.

The output is the classic dashboard JSON (the SDK's `dashboard` builders), not the SDK's v2
schema: the kube-prometheus Grafana sidecar and Grafana's file provisioning load classic JSON on
every Grafana version in use, while v2 needs Grafana 12 with its new-layout feature toggles. The
SDK marks the classic builders deprecated at import time; that warning is silenced below for
that reason.

Conventions, so the dashboards read alike:
- every query goes through the `datasource` variable (type prometheus), so one JSON works with
  whatever the Prometheus data source is called;
- counters are read with `rate(...[$__rate_interval])` (Grafana's window that always holds at
  least four scrapes), and summed over replicas unless a panel says otherwise;
- every panel has a unit and a description that says how to read it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Prefer using dashboardv2", category=DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders
    from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as common_models
    from grafana_foundation_sdk.models import dashboard as dashboard_models
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "k8s" / "monitoring" / "dashboards"
TAGS = ["loraplane"]
REFRESH = "30s"
DATASOURCE = common_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
# gRPC codes that mean the server failed the request; the others (INVALID_ARGUMENT, NOT_FOUND,
# RESOURCE_EXHAUSTED, CANCELLED...) are the caller's doing or load shedding, and have panels of their own.
SERVER_ERROR_CODES = "INTERNAL|UNKNOWN|UNAVAILABLE|DATA_LOSS"
ADAPTERS = '{adapter=~"$adapter"}'
"""The label selector of the adapters the dashboard's `adapter` variable picks."""
REQUESTS = "loraplane_serving_requests_total"
"""The serving replicas' RPC counter, which the serving dashboard's adapter variable lists adapters from."""
# statistic label -> (panel title, how to read it)
DRIFT_STATISTICS: dict[str, tuple[str, str]] = {
    "prompt_length_psi": (
        "Prompt lengths",
        "Population stability index of prompt lengths (token-length buckets, powers of two), live window "
        "against every prompt of the adapter's training job: are prompts shorter or longer than trained on?",
    ),
    "prompt_token_jsd": (
        "Prompt words",
        "Jensen-Shannon divergence of the prompts' hashed tokens, live window against every prompt of the "
        "training job: do users ask about other things than the training data covered?",
    ),
    "response_length_psi": (
        "Answer lengths",
        "Population stability index of generated answer lengths, live window against the adapter's answers "
        "to held-out prompts at training time: does it answer longer or shorter than when it was published?",
    ),
    "output_confidence_drop": (
        "Output confidence",
        "Reference minus live mean log-probability per generated token: is the model less sure of what it "
        "says? See the live vs reference confidence panel below.",
    ),
    "prompt_surprise_rise": (
        "Prompt surprise",
        "Live minus reference mean negative log-likelihood per prompt token: are prompts further from what "
        "the adapter expects? See the live vs reference surprise panel below.",
    ),
    "answer_form_drop": (
        "Answer form",
        "Reference minus live share of answers in the form the training answers share (JSON with their keys, "
        "one of their labels, their shape): has the adapter stopped answering as trained?",
    ),
    "truncation_rise": (
        "Answers cut short",
        "Live minus reference share of answers cut at max_tokens.",
    ),
    "prompt_meaning_shift": (
        "Prompt meaning",
        "Squared distance between the live and the reference mean prompt embedding (the model's last hidden "
        "state at a prompt's end, projected to 64 dimensions): do users ask for something else, in the same "
        "words or not? Absent on the vLLM engine, which gives no hidden states.",
    ),
    "refusal_rise": (
        "Refusals",
        'Live minus reference share of answers that open by declining ("I\'m sorry", "I can\'t").',
    ),
}
DRIFT_SCORE = (
    " Drawn as a drift score, -log10 of the statistic's p-value (2: one window in a hundred of unchanged "
    "traffic of this size reads as high), against the score at which the replica calls it over (dashed red): "
    "the false-alarm rate shared among the statistics."
)
# Full width is 24 grid units; these are the panel sizes used throughout.
HALF, THIRD, FULL = 12, 8, 24
HEIGHT = 8
Panel = cogbuilder.Builder[dashboard_models.Panel]
"""A panel of any kind, as a row takes it."""


def _legend(*, table_mode: bool = False) -> common_builders.VizLegendOptions:
    """A visible legend (the SDK's default hides it); a table with last and max for many series."""
    legend = common_builders.VizLegendOptions().show_legend(True).placement(common_models.LegendPlacement.BOTTOM)
    if table_mode:
        return legend.display_mode(common_models.LegendDisplayMode.TABLE).calcs(["lastNotNull", "max"])
    return legend.display_mode(common_models.LegendDisplayMode.LIST)


def _tooltip() -> common_builders.VizTooltipOptions:
    """All series at the hovered time, largest first: the one to look at is at the top."""
    return (
        common_builders.VizTooltipOptions()
        .mode(common_models.TooltipDisplayMode.MULTI)
        .sort(common_models.SortOrder.DESCENDING)
    )


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel; `instant` for tables that show only the latest value."""

    expr: str
    legend: str
    instant: bool = False
    table: bool = False

    def build(self, ref_id: str) -> prometheus.Dataquery:
        query = prometheus.Dataquery().datasource(DATASOURCE).ref_id(ref_id).expr(self.expr).legend_format(self.legend)
        if self.instant:
            query = query.instant()
        if self.table:
            query = query.format(PromQueryFormat.TABLE)
        return query


def _ref_id(index: int) -> str:
    """Targets are named A, B, C... so overrides can match a query by its ref id."""
    return chr(ord("A") + index)


def _dashed_red() -> list[dashboard_models.DynamicConfigValue]:
    """How a reference line (threshold, floor) is drawn: dashed, red, unfilled, apart from the data."""
    return [
        dashboard_models.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
        dashboard_models.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dashboard_models.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        dashboard_models.DynamicConfigValue(id_val="custom.lineWidth", value=2),
    ]


def _fixed_color(color: str) -> list[dashboard_models.DynamicConfigValue]:
    return [dashboard_models.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})]


def graph(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = HALF,
    min_value: float | None = 0,
    max_value: float | None = None,
    reference_line: str | None = None,
    many_series: bool = False,
) -> timeseries.Panel:
    """A time series panel. `reference_line` is the ref id of a query to draw as a dashed red line.

    `min_value` defaults to 0 because almost everything here is a count, rate or duration, and a
    y axis that starts at the data's minimum makes noise look like a cliff.
    """
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(HEIGHT)
        .fill_opacity(10)
        .line_width(1)
        .show_points(common_models.VisibilityMode.NEVER)
        .legend(_legend(table_mode=many_series))
        .tooltip(_tooltip())
        .targets([q.build(_ref_id(i)) for i, q in enumerate(queries)])
    )
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    if reference_line is not None:
        panel = panel.override_by_query(reference_line, _dashed_red())
    return panel


def _thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=value, color=color) for value, color in steps])
    )


@dataclass
class Layout:
    """Rows of panels, in order; `build` numbers every panel so links to a panel stay valid."""

    title: str
    uid: str
    description: str
    time_from: str
    variables: list[cogbuilder.Builder[dashboard_models.VariableModel]] = field(default_factory=list)
    rows: list[tuple[dashboard_builders.Row, list[Panel]]] = field(default_factory=list)

    def row(self, title: str, *panels: Panel, repeat: str | None = None) -> Layout:
        """A row of `panels`; with `repeat`, Grafana draws the row once per value of that variable."""
        row = dashboard_builders.Row(title)
        self.rows.append((row.repeat(repeat) if repeat else row, list(panels)))
        return self

    def build(self) -> dashboard_models.Dashboard:
        builder = (
            dashboard_builders.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(TAGS)
            .refresh(REFRESH)
            .time(self.time_from, "now")
            .timezone("browser")
            .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
            .link(
                dashboard_builders.DashboardLink("loraplane")
                .type(dashboard_models.DashboardLinkType.DASHBOARDS)
                .tags(TAGS)
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(
                dashboard_builders.DatasourceVariable("datasource")
                .label("Data source")
                .description("The Prometheus that scrapes loraplane's trainer and serving replicas.")
                .type("prometheus")
            )
        )
        for variable in self.variables:
            builder = builder.with_variable(variable)
        for row, panels in self.rows:
            builder = builder.with_row(row)
            for panel in panels:
                builder = builder.with_panel(panel)
        dashboard = builder.build()
        for number, built in enumerate(dashboard.panels or [], start=1):
            built.id_val = number
        return dashboard


def _adapter_variable(metric: str) -> dashboard_builders.QueryVariable:
    """Adapters seen on `metric`; "All" is `.*` so adapters that appear later are included too."""
    query = f"label_values({metric}, adapter)"
    return (
        dashboard_builders.QueryVariable("adapter")
        .label("Adapter")
        .description("Adapters to show (the serving adapter label; rarely used adapters may be folded into '_other').")
        .datasource(DATASOURCE)
        .query({"query": query, "refId": "adapter"})
        .definition(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _quantile(q: float, bucket: str, by: str = "", selector: str = "", window: str = "$__rate_interval") -> str:
    """The q-quantile of a histogram over `window`, summed over replicas and kept apart by `by`."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({bucket}{selector}[{window}])))"


def _jobs_by_state() -> stat.Panel:
    """Jobs in each state now, as big numbers with their trend."""
    return (
        stat.Panel()
        .title("Jobs by state")
        .description(
            "Jobs in each state now, read from the trainer's job store at scrape time (so the totals survive "
            "restarts). succeeded/failed/cancelled only grow; queued and running are the live load. The "
            "sparkline shows the trend over the time range."
        )
        .datasource(DATASOURCE)
        .unit("short")
        .span(HALF)
        .height(HEIGHT)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .color_scheme(dashboard_builders.FieldColor().mode(dashboard_models.FieldColorModeId.FIXED).fixed_color("blue"))
        .override_by_name("failed", _fixed_color("red"))
        .override_by_name("succeeded", _fixed_color("green"))
        .override_by_name("cancelled", _fixed_color("orange"))
        .targets([Query("sum by (state) (loraplane_trainer_jobs)", "{{state}}").build("A")])
    )


def _job_panels() -> list[Panel]:
    """The trainer's queue: jobs by state, queued and running, transitions, and how long jobs take."""
    return [
        _jobs_by_state(),
        graph(
            "Queued and running jobs",
            "Jobs waiting for the trainer (queued) and being trained (running). A queue that grows while "
            "running stays flat means the trainer is at its concurrency limit: jobs wait.",
            "short",
            [
                Query('sum(loraplane_trainer_jobs{state="queued"})', "queued"),
                Query('sum(loraplane_trainer_jobs{state="running"})', "running"),
            ],
        ),
        graph(
            "Job transitions",
            "Jobs entering each state, per minute. A rise in failed next to succeeded is the first sign "
            "that jobs break; queued is the submission rate.",
            "opm",
            [
                Query(
                    "60 * sum by (state) (rate(loraplane_trainer_job_transitions_total[$__rate_interval]))",
                    "{{state}}",
                )
            ],
        ),
        graph(
            "Job duration p50 / p95 (jobs finished in the last hour)",
            "Start-to-end time of finished jobs by final state, as quantiles of the jobs that finished in "
            "the trailing hour (jobs end too rarely for a short window). Empty when no job finished. A "
            "short failed p95 means jobs fail early (bad input); a long one, late (resources).",
            "s",
            [
                Query(
                    _quantile(0.5, "loraplane_trainer_job_duration_seconds_bucket", "state", window="1h"),
                    "p50 {{state}}",
                ),
                Query(
                    _quantile(0.95, "loraplane_trainer_job_duration_seconds_bucket", "state", window="1h"),
                    "p95 {{state}}",
                ),
            ],
        ),
    ]


def _training_panels() -> list[Panel]:
    """The running jobs: steps per second, refused submissions, and each job's loss."""
    return [
        graph(
            "Training steps",
            "Optimizer steps per second over all running jobs: the trainer's throughput. It drops to 0 when "
            "nothing runs; a drop while jobs are running means training slowed down (contention, I/O).",
            "steps/s",
            [Query("sum(rate(loraplane_trainer_training_steps_total[$__rate_interval]))", "steps")],
        ),
        graph(
            "Rejected job requests",
            "CreateJob requests refused before a job existed, by gRPC status code. INVALID_ARGUMENT is a "
            "caller's bad request; RESOURCE_EXHAUSTED means the queue is full.",
            "reqps",
            [Query("sum by (code) (rate(loraplane_trainer_rejected_jobs_total[$__rate_interval]))", "{{code}}")],
        ),
        graph(
            "Loss of running jobs",
            "Latest training and evaluation loss of each running job, by job, adapter and split. A curve "
            "should fall then flatten; eval rising while train keeps falling is overfitting. Series end "
            "when their job ends.",
            "none",
            [
                Query(
                    "max by (job_id, adapter, split) (loraplane_trainer_running_job_loss)",
                    "{{adapter}} {{job_id}} {{split}}",
                )
            ],
            width=FULL,
            min_value=None,
            many_series=True,
        ),
    ]


def training() -> dashboard_models.Dashboard:
    """The trainer: its job queue, how long jobs take, and how the running ones are learning."""
    return (
        Layout(
            title="loraplane / Training",
            uid="loraplane-training",
            description="The loraplane trainer: job queue, job durations, throughput and loss of running jobs.",
            time_from="now-6h",
        )
        .row("Jobs", *_job_panels())
        .row("Training", *_training_panels())
        .build()
    )


def _traffic_panels() -> list[Panel]:
    """Requests per second by adapter and status, and the share the server failed."""
    return [
        graph(
            "Requests by adapter and status",
            "RPCs answered per second over all replicas, by adapter and gRPC status. OK is success; "
            "RESOURCE_EXHAUSTED is load shedding; INVALID_ARGUMENT and NOT_FOUND are callers' mistakes.",
            "reqps",
            [
                Query(
                    f"sum by (adapter, status) (rate({REQUESTS}{ADAPTERS}[$__rate_interval]))",
                    "{{adapter}} {{status}}",
                )
            ],
            many_series=True,
        ),
        graph(
            "Server error ratio",
            f"Share of requests that failed on the server side ({SERVER_ERROR_CODES}), per adapter. "
            "Caller errors and load shedding are not counted. Should stay at 0; empty when there is no "
            "traffic.",
            "percentunit",
            [
                Query(
                    # "or 0 * all": an adapter with traffic and no failure shows 0 rather than nothing.
                    f'(sum by (adapter) (rate({REQUESTS}{{adapter=~"$adapter",status=~"{SERVER_ERROR_CODES}"}}'
                    f"[$__rate_interval])) or 0 * sum by (adapter) (rate({REQUESTS}{ADAPTERS}[$__rate_interval])))"
                    f" / sum by (adapter) (rate({REQUESTS}{ADAPTERS}[$__rate_interval]))",
                    "{{adapter}}",
                )
            ],
            max_value=1,
        ),
    ]


def _latency_panels() -> list[Panel]:
    """Time to first token, between tokens and to the last token per adapter; RPC duration by method."""
    return [
        graph(
            "Time to first token p50 / p99",
            "From receiving a generation request to its first token, per adapter: queueing, adapter load "
            "and prefill included. p50 is the usual wait, p99 the worst 1%; a p99 far above p50 with flat "
            "p50 points at cold adapter loads or queueing.",
            "s",
            [
                Query(
                    _quantile(0.5, "loraplane_serving_time_to_first_token_seconds_bucket", "adapter", ADAPTERS),
                    "p50 {{adapter}}",
                ),
                Query(
                    _quantile(0.99, "loraplane_serving_time_to_first_token_seconds_bucket", "adapter", ADAPTERS),
                    "p99 {{adapter}}",
                ),
            ],
            width=THIRD,
        ),
        graph(
            "Inter-token latency p99",
            "Time between two generated tokens of one request, per adapter (99th percentile): how smooth "
            "streaming feels. It grows with the batch size the engine decodes at once.",
            "s",
            [
                Query(
                    _quantile(0.99, "loraplane_serving_inter_token_latency_seconds_bucket", "adapter", ADAPTERS),
                    "p99 {{adapter}}",
                )
            ],
            width=THIRD,
        ),
        graph(
            "End-to-end generation latency p99",
            "From receiving a generation request to its last token, per adapter (99th percentile). It "
            "depends on how many tokens are asked for; read it next to tokens generated.",
            "s",
            [
                Query(
                    _quantile(0.99, "loraplane_serving_generation_latency_seconds_bucket", "adapter", ADAPTERS),
                    "p99 {{adapter}}",
                )
            ],
            width=THIRD,
        ),
        graph(
            "RPC duration p99 by method",
            "From receiving an RPC to its last response message, by method (all adapters, 99th "
            "percentile): covers the non-generation RPCs too (listing, loading adapters).",
            "s",
            [Query(_quantile(0.99, "loraplane_serving_request_duration_seconds_bucket", "rpc"), "p99 {{rpc}}")],
            width=FULL,
        ),
    ]


def _token_panels() -> list[Panel]:
    """Tokens generated and read per second, per adapter."""
    return [
        graph(
            "Tokens per second",
            "Tokens generated and prompt tokens read per second, per adapter, over all replicas: the "
            "engine's real throughput. Generated falling while requests stay flat means shorter answers "
            "or a slower engine.",
            "tokens/s",
            [
                Query(
                    f"sum by (adapter) (rate(loraplane_serving_generated_tokens_total{ADAPTERS}[$__rate_interval]))",
                    "generated {{adapter}}",
                ),
                Query(
                    f"sum by (adapter) (rate(loraplane_serving_prompt_tokens_total{ADAPTERS}[$__rate_interval]))",
                    "prompt {{adapter}}",
                ),
            ],
            width=FULL,
            many_series=True,
        ),
    ]


def _adapter_cache_panels() -> list[Panel]:
    """The adapter caches: what each tier holds, how often it answers, how long a load takes."""
    return [
        graph(
            "Adapters resident by tier",
            "Adapter versions held now in each cache tier (engine: loaded in the model; disk: verified local "
            "copies), per replica. An engine tier pinned at its limit with evictions below means adapters "
            "take turns: expect cold loads.",
            "short",
            [Query("sum by (tier, instance) (loraplane_serving_adapters_resident)", "{{tier}} {{instance}}")],
            width=THIRD,
        ),
        graph(
            "Adapter cache hit ratio by tier",
            "Share of adapter lookups each tier answered without going further down (engine, then disk, "
            "then the store). Near 1 is good; a falling engine ratio means more requests wait for a load.",
            "percentunit",
            [
                Query(
                    'sum by (tier) (rate(loraplane_serving_adapter_cache_lookups_total{result="hit"}'
                    "[$__rate_interval])) / sum by (tier) "
                    "(rate(loraplane_serving_adapter_cache_lookups_total[$__rate_interval]))",
                    "{{tier}}",
                )
            ],
            max_value=1,
            width=THIRD,
        ),
        graph(
            "Adapter load time p95 by source",
            "Time to fetch (when not on disk), verify and load one adapter version, by where it came from "
            "(95th percentile). Loads from the store are the slow ones; they show up in time to first token.",
            "s",
            [
                Query(
                    _quantile(0.95, "loraplane_serving_adapter_load_duration_seconds_bucket", "source"),
                    "p95 {{source}}",
                )
            ],
            width=THIRD,
        ),
    ]


def _adapter_churn_panels() -> list[Panel]:
    """Adapters coming and going: loads and their failures, evictions, the disk cache's size."""
    return [
        graph(
            "Adapter loads and load failures",
            "Adapter versions loaded into the engine and loads that failed, per second, per adapter. Any "
            "failure means requests for that adapter were refused: check the serving logs.",
            "ops",
            [
                Query(
                    f"sum by (adapter) (rate(loraplane_serving_adapter_loads_total{ADAPTERS}[$__rate_interval]))",
                    "loads {{adapter}}",
                ),
                Query(
                    "sum by (adapter) "
                    f"(rate(loraplane_serving_adapter_load_failures_total{ADAPTERS}[$__rate_interval]))",
                    "failures {{adapter}}",
                ),
            ],
            width=THIRD,
        ),
        graph(
            "Adapter evictions by tier",
            "Adapter versions evicted per second from each tier to make room for another (least recently "
            "used first). Steady engine evictions mean more adapters are in use than the engine holds.",
            "ops",
            [Query("sum by (tier) (rate(loraplane_serving_adapter_evictions_total[$__rate_interval]))", "{{tier}}")],
            width=THIRD,
        ),
        graph(
            "Disk cache size",
            "Bytes of verified adapter copies in each replica's local disk cache.",
            "bytes",
            [Query("sum by (instance) (loraplane_serving_adapter_cache_bytes)", "{{instance}}")],
            width=THIRD,
        ),
    ]


def _engine_panels() -> list[Panel]:
    """The engine's queue and load, and the batch size it decodes at."""
    return [
        graph(
            "Queue and engine load",
            "Over all replicas: requests waiting for a place in the engine (queued, bounded by "
            "max_concurrent_requests), requests the engine is generating for (running), and requests handed "
            "to the engine with no token yet (waiting). A queue that stays above 0 means serving is "
            "saturated: add replicas.",
            "short",
            [
                Query("sum(loraplane_serving_requests_queued)", "queued"),
                Query("sum(loraplane_serving_engine_requests_running)", "running"),
                Query("sum(loraplane_serving_engine_requests_waiting)", "waiting"),
            ],
        ),
        graph(
            "Batch size",
            "Sequences decoded together in each engine step (engines that report it): the mean, and the "
            "median and 95th percentile. Bigger batches mean more throughput per step and slower tokens "
            "per request.",
            "short",
            [
                Query(
                    "sum(rate(loraplane_serving_engine_batch_size_sum[$__rate_interval])) / "
                    "sum(rate(loraplane_serving_engine_batch_size_count[$__rate_interval]))",
                    "mean",
                ),
                Query(_quantile(0.5, "loraplane_serving_engine_batch_size_bucket"), "p50"),
                Query(_quantile(0.95, "loraplane_serving_engine_batch_size_bucket"), "p95"),
            ],
        ),
    ]


def serving() -> dashboard_models.Dashboard:
    """The serving replicas: traffic, latency, token throughput, the adapter caches and the engine."""
    return (
        Layout(
            title="loraplane / Serving",
            uid="loraplane-serving",
            description="The loraplane serving replicas: traffic, latency, tokens, adapter caches, engine queue.",
            time_from="now-1h",
            variables=[_adapter_variable(REQUESTS)],
        )
        .row("Traffic", *_traffic_panels())
        .row("Latency", *_latency_panels())
        .row("Tokens", *_token_panels())
        .row("Adapters", *_adapter_cache_panels(), *_adapter_churn_panels())
        .row("Engine", *_engine_panels())
        .build()
    )


def _drift_statistic(statistic: str, title: str, description: str) -> timeseries.Panel:
    """One statistic's drift score for the chosen adapter versions, with the score that is over as a dashed
    red line (query B)."""
    return graph(
        f"{title} ({statistic})",
        description + DRIFT_SCORE,
        "none",
        [
            Query(
                f'-log10(loraplane_drift_p_value{{adapter=~"$adapter",statistic="{statistic}"}})',
                "{{adapter}} v{{version}} {{instance}}",
            ),
            Query('-log10(max(loraplane_drift_p_value_threshold{adapter=~"$adapter"}))', "over"),
        ],
        width=THIRD,
        reference_line="B",
    )


def _over_table() -> table.Panel:
    """Every (adapter, version, statistic) as a row, red where it is over now."""
    over = "over"
    return (
        table.Panel()
        .title("Statistics over")
        .description(
            "Each drift statistic per adapter version, now (worst replica): 1 (red) where it is over, its "
            "p-value within the false-alarm rate the replica shares among the statistics (or its value above a "
            "raw threshold set for it); sorted with what is over first. The LoraplaneAdapterDrift alert fires "
            "on a statistic over for 15 minutes."
        )
        .datasource(DATASOURCE)
        .unit("none")
        .span(THIRD)
        .height(HEIGHT)
        .thresholds(_thresholds((None, "green"), (1.0, "red")))
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True}, "renameByName": {"Value": over}},
            )
        )
        .override_by_name(
            over,
            [
                dashboard_models.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background", "mode": "basic"}
                )
            ],
        )
        .sort_by([common_builders.TableSortByFieldState().display_name(over).desc(True)])
        .targets(
            [
                Query(
                    'max by (adapter, version, statistic) (loraplane_drift_over{adapter=~"$adapter"})',
                    "",
                    instant=True,
                    table=True,
                ).build("A")
            ]
        )
    )


def _live_vs_reference_panels() -> list[Panel]:
    """The figures behind the statistics, live beside reference, and how much data each side holds."""
    return [
        graph(
            "Output confidence: live vs reference",
            "Mean log-probability per generated token (nats, closer to 0 = more confident), of the live "
            "window and of the training reference. Live below reference is output_confidence_drop.",
            "nats",
            [Query(f"loraplane_drift_output_confidence{ADAPTERS}", "{{adapter}} v{{version}} {{side}} {{instance}}")],
            width=THIRD,
            min_value=None,
        ),
        graph(
            "Prompt surprise: live vs reference",
            "Mean negative log-likelihood per prompt token (nats, higher = less expected), of the live "
            "window and of the training reference. Live above reference is prompt_surprise_rise.",
            "nats",
            [Query(f"loraplane_drift_prompt_surprise{ADAPTERS}", "{{adapter}} v{{version}} {{side}} {{instance}}")],
            width=THIRD,
        ),
        graph(
            "Answers in the trained form: live vs reference",
            "Share of answers in the form the training answers share (JSON with their keys, one of their labels, "
            "their shape), of the live window and of the adapter's answers to held-out prompts. Live below "
            "reference is answer_form_drop.",
            "percentunit",
            [Query(f"loraplane_drift_answer_form_share{ADAPTERS}", "{{adapter}} v{{version}} {{side}} {{instance}}")],
            width=THIRD,
            max_value=1,
        ),
        graph(
            "Window and reference sizes",
            "Requests in each adapter version's live window, and the records of its training reference: "
            "answered held-out prompts (generation statistics) and every prompt of the job (prompt statistics). "
            "The p-values account for both sizes.",
            "short",
            [
                Query(f"loraplane_drift_window_requests{ADAPTERS}", "window {{adapter}} v{{version}} {{instance}}"),
                Query(
                    f"loraplane_drift_reference_samples{ADAPTERS}",
                    "reference {{kind}} {{adapter}} v{{version}} {{instance}}",
                ),
            ],
            width=THIRD,
        ),
    ]


def _feedback_score(title: str, description: str, score: Query) -> timeseries.Panel:
    """A feedback score query drawn against the alert's floor (dashed red)."""
    return graph(
        title,
        description,
        "none",
        [score, Query("max(loraplane_drift_feedback_score_floor)", "floor")],
        width=THIRD,
        min_value=None,
        reference_line="B",
    )


def _feedback_panels() -> list[Panel]:
    """What users say about the answers: the mean score against its floor, how much of the window it covers."""
    return [
        _feedback_score(
            "Mean feedback score",
            "Mean score users gave the adapter's answers in the live window, with the floor (dashed red) "
            "below which feedback counts as degraded.",
            Query(f"loraplane_drift_feedback_score{ADAPTERS}", "{{adapter}} {{instance}}"),
        ),
        graph(
            "Feedback rate",
            "Share of the adapter's windowed requests that received feedback: how much of the window the "
            "mean score speaks for. A low rate makes the score noisy.",
            "percentunit",
            [Query(f"loraplane_drift_feedback_rate{ADAPTERS}", "{{adapter}} {{instance}}")],
            width=THIRD,
            max_value=1,
        ),
        graph(
            "Feedback received",
            "Feedback messages received per second by the serving replicas, per adapter.",
            "reqps",
            [
                Query(
                    f"sum by (adapter) (rate(loraplane_serving_feedback_total{ADAPTERS}[$__rate_interval]))",
                    "{{adapter}}",
                )
            ],
            width=THIRD,
        ),
    ]


def drift() -> dashboard_models.Dashboard:
    """Drift of live traffic from each adapter's training reference, and user feedback."""
    statistic_panels = [_drift_statistic(s, title, text) for s, (title, text) in DRIFT_STATISTICS.items()]
    return (
        Layout(
            title="loraplane / Drift",
            uid="loraplane-drift",
            description=(
                "How far live traffic of each adapter version has moved from its training reference, and what "
                "users say about the answers. Each statistic is judged against the spread it shows on unchanged "
                "traffic at the window's size: a drift score over the dashed line is over."
            ),
            time_from="now-24h",
            variables=[_adapter_variable("loraplane_drift_window_requests")],
        )
        .row("Drift statistics", _over_table(), *statistic_panels)
        .row("Live vs reference", *_live_vs_reference_panels())
        .row("Feedback", *_feedback_panels())
        .build()
    )


# -- releases ---------------------------------------------------------------------------------------

RELEASE_STATE: dict[str, str] = {
    "stable": "loraplane_release_stable_version",
    "candidate": "loraplane_release_candidate_version",
    "canary share": "loraplane_release_canary_share",
    "shadow": "loraplane_release_shadow",
    "state stale": "loraplane_release_state_stale",
}
"""Column of the release table -> the gauge it shows (serving_svc/release_metrics.py)."""
VERSIONS = 'adapter=~"$adapter",version!=""'
"""The requests an adapter version answered (the base model's and RPCs about no model have no version)."""
BY_VERSION = "adapter, version"
ROLLBACKS = f"loraplane_release_rollbacks_total{ADAPTERS}"


def _per_version_ratio(part: str, whole: str) -> str:
    """`part` over `whole`, both counters summed by adapter and version; 0 where `part` has no series yet."""
    whole_rate = f"sum by ({BY_VERSION}) (rate({whole}[$__rate_interval]))"
    return f"(sum by ({BY_VERSION}) (rate({part}[$__rate_interval])) or 0 * {whole_rate}) / {whole_rate}"


def _release_table() -> table.Panel:
    """Each adapter with a release, one row: its versions, how the candidate is tried, whether it is stale."""
    return (
        table.Panel()
        .title("Releases")
        .description(
            "Every adapter with a release, now (highest over the replicas): the stable version, the candidate on "
            "trial (0: none), the candidate's canary share (0 in shadow mode or paused), 1 in shadow mode, and 1 "
            "where a replica routes by a release it could not re-read from the store (LoraplaneReleaseStateStale)."
        )
        .datasource(DATASOURCE)
        .unit("none")
        .span(FULL)
        .height(HEIGHT)
        .with_transformation(dashboard_models.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {f"Value #{_ref_id(i)}": column for i, column in enumerate(RELEASE_STATE)},
                },
            )
        )
        .targets(
            [
                Query(f"max by (adapter) ({metric}{ADAPTERS})", "", instant=True, table=True).build(_ref_id(i))
                for i, metric in enumerate(RELEASE_STATE.values())
            ]
        )
    )


def _release_decision_panels() -> list[Panel]:
    """The automatic rollbacks, by the guardrail that decided them."""
    return [
        graph(
            "Automatic rollbacks",
            "Candidates rolled back by a replica's analysis in each interval, by the guardrail the candidate was "
            "worse on beyond its margin (loraplane release ADAPTER status shows the figures; the "
            "LoraplaneReleaseRolledBack alert fires on each). Promotions and hand decisions are in the release's "
            "history.",
            "short",
            [
                Query(
                    # A replica's first rollback on a guardrail is a new series at 1, which increase() reads as 0.
                    f"sum by (adapter, guardrail) (({ROLLBACKS} unless {ROLLBACKS} offset $__rate_interval) "
                    f"or increase({ROLLBACKS}[$__rate_interval]))",
                    "{{adapter}} {{guardrail}}",
                )
            ],
            width=FULL,
        ),
    ]


def _version_quantiles(title: str, description: str, bucket: str) -> timeseries.Panel:
    """p50 and p99 of histogram `bucket` per version of the adapter, over all replicas."""
    return graph(
        title,
        description,
        "s",
        [
            Query(_quantile(q, bucket, BY_VERSION, f"{{{VERSIONS}}}"), f"v{{{{version}}}} p{round(q * 100)}")
            for q in (0.5, 0.99)
        ],
        width=THIRD,
    )


def _version_panels() -> list[Panel]:
    """One adapter's versions side by side: the share each answers, errors, latency, drift, feedback, agreement."""
    answered = f"loraplane_serving_generation_latency_seconds_count{{{VERSIONS}}}"
    requests = f"{REQUESTS}{{{VERSIONS}}}"
    return [
        graph(
            "Traffic share by version",
            "Share of the adapter's answered requests each version gave (pinned name@vN requests included), with "
            "the candidate's canary share as set (dashed red). Over many callers the candidate's share settles "
            "near the setting; one caller always gets the same version.",
            "percentunit",
            [
                Query(
                    f"sum by ({BY_VERSION}) (rate({answered}[$__rate_interval])) / on (adapter) group_left "
                    f"sum by (adapter) (rate({answered}[$__rate_interval]))",
                    "v{{version}}",
                ),
                Query(f"max by (adapter) (loraplane_release_canary_share{ADAPTERS})", "canary share set"),
            ],
            width=THIRD,
            max_value=1,
            reference_line="B",
        ),
        graph(
            "Server error ratio by version",
            f"Share of each version's requests that failed on the server side ({SERVER_ERROR_CODES}). A "
            "candidate whose files do not load fails here and is rolled back on the error_rate guardrail.",
            "percentunit",
            [
                Query(
                    _per_version_ratio(
                        f'{REQUESTS}{{{VERSIONS},status=~"{SERVER_ERROR_CODES}"}}',
                        requests,
                    ),
                    "v{{version}}",
                )
            ],
            width=THIRD,
            max_value=1,
        ),
        _version_quantiles(
            "Time to first token by version",
            "p50 and p99 time to first token of each version's requests over all replicas (ttft guardrails).",
            "loraplane_serving_time_to_first_token_seconds_bucket",
        ),
        _version_quantiles(
            "Latency by version",
            "p50 and p99 time from a request's arrival to its last token, per version (latency guardrails).",
            "loraplane_serving_generation_latency_seconds_bucket",
        ),
        graph(
            "Drift statistics over by version",
            "How many drift statistics are over for each version's live window (worst replica): a candidate "
            "with more over than stable, beyond the margin, is rolled back (drift_statistics_over). See the "
            "Drift dashboard for which.",
            "short",
            [
                Query(
                    f"sum by ({BY_VERSION}) (max by ({BY_VERSION}, statistic) (loraplane_drift_over{ADAPTERS}))",
                    "v{{version}}",
                )
            ],
            width=THIRD,
        ),
        _feedback_score(
            "Feedback score by version",
            "Mean score callers gave each version's answers in its live window (mean over replicas), against "
            "the floor of the LoraplaneFeedbackScoreLow alert (dashed red); the feedback_score guardrail "
            "compares candidate with stable.",
            Query(f"avg by ({BY_VERSION}) (loraplane_drift_feedback_score{ADAPTERS})", "v{{version}}"),
        ),
        graph(
            "Shadow agreement",
            "In shadow mode: how the candidate's answers agree with stable's on the same requests (exact: share "
            "equal; rouge_l: mean ROUGE-L F-measure), mean over replicas. The shadow_exact and shadow_rouge_l "
            "guardrails compare them with full agreement.",
            "percentunit",
            [
                Query(
                    f"avg by ({BY_VERSION}, measure) (loraplane_release_shadow_agreement{ADAPTERS})",
                    "v{{version}} {{measure}}",
                )
            ],
            width=HALF,
            max_value=1,
        ),
        graph(
            "Shadow requests by outcome",
            "Requests run on the candidate in the shadow of stable per second, by outcome: compared; busy "
            "(dropped while real requests waited or the engine held more than a batch); no_slot (dropped: "
            "loading the candidate would have taken the adapter slot of a version callers used lately); "
            "preempted (aborted for a real request); failed. All but compared and failed are the shadow "
            "yielding to callers.",
            "reqps",
            [
                Query(
                    f"sum by ({BY_VERSION}, outcome) "
                    f"(rate(loraplane_release_shadow_requests_total{ADAPTERS}[$__rate_interval]))",
                    "v{{version}} {{outcome}}",
                )
            ],
            width=HALF,
        ),
    ]


def releases() -> dashboard_models.Dashboard:
    """Every release at a glance, then one section per adapter with its versions side by side."""
    return (
        Layout(
            title="loraplane / Releases",
            uid="loraplane-releases",
            description=(
                "Adapter releases: which version is stable and which is on trial as a canary or in the shadow of "
                "stable, and the two versions side by side on the figures the replicas decide by: the share of "
                "traffic each answers, server errors, latency, drift, feedback and, in shadow, agreement."
            ),
            time_from="now-6h",
            variables=[_adapter_variable("loraplane_release_stable_version")],
        )
        .row("All releases", _release_table(), *_release_decision_panels())
        .row("Release of $adapter", *_version_panels(), repeat="adapter")
        .build()
    )


# -- the loop -----------------------------------------------------------------------------------------

CAPTURES = "loraplane_serving_captures_total"


def _increase(counter: str, by: str) -> str:
    """`counter`'s increase in each interval, summed `by` labels; a series born in the interval counts whole
    (increase() reads a new series' first sample as no change)."""
    return (
        f"sum by ({by}) (({counter} unless {counter} offset $__rate_interval) or increase({counter}[$__rate_interval]))"
    )


def _loop_panels() -> list[Panel]:
    """From captured traffic to a new version on trial: captures kept and lost, retrains, gate verdicts."""
    return [
        graph(
            "Captures",
            "Captured requests and feedback records written to the store each second, by adapter and kind, and "
            "those dropped (queue_full, store_error, paused: the LoraplaneCaptureDropping alert fires when drops "
            "last). Capture is off until an admin turns it on per adapter.",
            "reqps",
            [
                Query(
                    f"sum by (adapter, kind, outcome) (rate({CAPTURES}{ADAPTERS}[$__rate_interval]))",
                    "{{adapter}} {{kind}} {{outcome}}",
                )
            ],
            width=HALF,
            many_series=True,
        ),
        graph(
            "Retrain requests",
            "Retrain requests in each interval, by trigger (manual, or an alert through Alertmanager's webhook) and "
            "outcome: started a job, or nothing because one is in flight, the cooldown runs or the adapter's "
            "retraining policy is off.",
            "short",
            [Query(_increase("loraplane_trainer_retrains_total", "trigger, outcome"), "{{trigger}} {{outcome}}")],
            width=HALF,
        ),
        graph(
            "Gate verdicts",
            "Versions that continued another, judged by their job against it in each interval: passed (it may go "
            "on trial as a canary) or failed (published, never released by automation).",
            "short",
            [Query(_increase("loraplane_trainer_gate_verdicts_total", "verdict"), "{{verdict}}")],
            width=HALF,
        ),
        graph(
            "Stable and candidate versions",
            "The version that answers each adapter's name and the one on trial (0: none): a retrained version "
            "appears as the candidate, then as stable when the replicas promote it, or goes when they roll it "
            "back.",
            "none",
            [
                Query(f"max by (adapter) (loraplane_release_stable_version{ADAPTERS})", "{{adapter}} stable"),
                Query(f"max by (adapter) (loraplane_release_candidate_version{ADAPTERS})", "{{adapter}} candidate"),
            ],
            width=HALF,
        ),
    ]


def loop() -> dashboard_models.Dashboard:
    """The loop from drifted traffic back to a better version, stage by stage."""
    return (
        Layout(
            title="loraplane / Loop",
            uid="loraplane-loop",
            description=(
                "From drifted traffic back to a better adapter: the traffic captured with its feedback, the "
                "retrain jobs started by hand or by alerts, their gate against the version they continue, and "
                "the versions on trial and promoted."
            ),
            time_from="now-24h",
            variables=[_adapter_variable(CAPTURES)],
        )
        .row("Captured traffic, retraining and the gate", *_loop_panels())
        .build()
    )


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard, exactly as committed under k8s/monitoring/dashboards/."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    dashboards = {
        "loraplane-training.json": training(),
        "loraplane-serving.json": serving(),
        "loraplane-drift.json": drift(),
        "loraplane-releases.json": releases(),
        "loraplane-loop.json": loop(),
    }
    return {name: encoder.encode(dashboard) + "\n" for name, dashboard in dashboards.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare with the committed files; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}: run python scripts/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
