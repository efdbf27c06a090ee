"""The results.json schema: the contract between the runner that measures and the reports that read.

It lives in the core (pydantic only), below the measuring layers that write it and the reports that read it, so
that ``reports`` can re-render any stored run without an ML framework installed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from edgecraft.core.signature import Signature, StrictModel

SCHEMA_VERSION = (
    6  # 2: signatures, evaluators (quality), per-output fidelity; 3: model failure, evaluation data digest;
)
# 4: accuracy control (layer sensitivity, layers kept in float) on pass records, per-operator profiles on rows;
# 5: rows measured on remote devices (device, emulated) and the devices' descriptions;
# 6: the remote devices measured at the same time (parallel_devices)


# Prefixes of ResultRow.warnings that the compare gate acts on; whoever writes such a warning starts it with these.
CONVERSION_WARNING = "conversion bug?"
NOISE_WARNING = "noisy"


class LatencyStats(StrictModel):
    """Latency of single-input synchronous inference, in milliseconds, over the warm timed runs.

    min, max, mean, std, IQR and p90/p95/p99 pool every timed sample of every process repetition; percentiles
    use numpy's ``linear`` method (Hyndman & Fan type 7: rank (n − 1)·q, interpolated between the two closest
    samples). p50, the headline, is the median of the repetitions' medians (with one repetition: the median).
    """

    runs: int
    mean: float
    std: float
    min: float
    max: float
    p50: float = Field(gt=0, description="A median latency of zero or less is a corrupt measurement.")
    iqr: float | None = Field(None, description="Interquartile range p75 − p25; absent in older results.")
    p90: float
    p95: float
    p99: float
    p50_ci95: tuple[float, float] = Field(
        description="Bootstrap 95 % confidence interval of p50; with several repetitions a two-level bootstrap "
        "(repetitions, then samples within each), so it covers the spread between processes."
    )
    repetition_p50: list[float] = Field([], description="The median of each process repetition, in round order.")
    cv_across_repetitions: float | None = Field(
        None, description="Coefficient of variation of repetition_p50 (std / mean); None with one repetition."
    )


class OutputFidelity(StrictModel):
    """How far one output is from the same output of the fp32 reference."""

    max_abs_diff: float
    mean_abs_diff: float
    snr_db: float | None = Field(None, description="10·log10(Σref² / Σ(out − ref)²); None when the output is exact.")


class Fidelity(StrictModel):
    """Agreement of a variant's outputs with the fp32 reference on the evaluation split, over every output."""

    top1_agreement: float | None = Field(
        None, description="Argmax agreement on the first output, where it is a [batch, classes] score; else None."
    )
    max_abs_diff: float = Field(description="The largest |Δ| over every output.")
    mean_abs_diff: float = Field(description="Mean |Δ| over every element of every output.")
    outputs: dict[str, OutputFidelity] = Field({}, description="Per output, by name; empty in older results.")


class Quality(StrictModel):
    """What an evaluator measured on a set of outputs: its headline metric (None, with the reason, where it
    cannot be measured) and every figure it computed."""

    evaluator: str
    metric: str = Field(description="Name of the headline metric, e.g. 'top-1 accuracy', 'mean cosine to fp32'.")
    value: float | None = Field(None, description="The headline metric, a fraction where higher is better.")
    metrics: dict[str, float] = Field({})
    not_measured: str | None = Field(None, description="Why there is no headline value.")


class MemorySnapshot(StrictModel):
    """Resident memory of the benchmark process at the end of one phase, read between phases (never inside a
    timed loop). ``peak_mb`` is the high-water mark (VmHWM, else ru_maxrss); anonymous (heap) and file-backed
    (mapped libraries and model files) resident memory come from /proc/self/status where it exists."""

    phase: Literal["start", "import", "load", "first_inference", "warmup", "end"] = Field(
        description="start: numpy and the target registry only; import: + the runtime; load: + the compiled "
        "model; first_inference: + the first inference (arenas are sized on first use); warmup: after warm-up; "
        "end: after the timed runs (before the throughput and accuracy passes)."
    )
    peak_mb: float
    rss_mb: float | None = None
    anon_mb: float | None = None
    file_mb: float | None = None
    peak_over_import_mb: float = Field(description="peak_mb minus the peak after the runtime's bare import.")


class Repetition(StrictModel):
    """One fresh benchmark process of a row: what it timed and how the phases ended."""

    index: int = Field(description="Round number (0-based); each round measures every row once, shuffled.")
    order: int = Field(description="Position of this row in its round's shuffled order.")
    p50_ms: float
    runs: int
    warmup_runs: int
    warmup_s: float
    measure_s: float
    stopped_by: Literal["minimums", "max_runs", "max_s"] = Field(
        description="What ended the timed phase: both minimums reached, or a cap (then below the minimums)."
    )
    import_s: float
    load_s: float
    first_inference_ms: float
    cpus: list[int] = Field([], description="CPUs the process was allowed to run on (its affinity).")
    steal_fraction: float | None = Field(
        None, description="Share of CPU time stolen by the hypervisor during the timed phase (/proc/stat)."
    )


class Throughput(StrictModel):
    """A throughput measurement, separate from the single-stream latency: ``parallel`` requests, each with its
    own session and thread, run batches of ``batch_size`` for a fixed time."""

    batch_size: int
    parallel: int
    items_per_s: float | None = None
    batch_latency_ms: float | None = Field(None, description="Mean wall time of one batch within one request.")
    seconds: float | None = None
    error: str | None = Field(None, description="Why this configuration failed when it ran.")
    not_measured: str | None = Field(
        None, description="Why the model cannot run this configuration at all, e.g. 'not measured (fixed batch 1)'."
    )


class LengthBucket(StrictModel):
    """Latency of the timed calls whose input length fell in ``shortest``–``longest`` (token inputs at their own
    lengths): a model with a dynamic sequence is as fast as the texts it gets."""

    shortest: int
    longest: int
    calls: int = Field(description="Timed calls in the bucket, over every repetition.")
    p50_ms: float


class ServerProbe(StrictModel):
    """One LoadGen run of the Server search: the rate offered and what came of it."""

    target_qps: float
    valid: bool
    scheduled_qps: float | None = None
    percentiles_ms: dict[str, float] = Field({}, description="Latency percentiles at this rate ('p50', 'p99', ...).")


class ScenarioResult(StrictModel):
    """One MLPerf scenario as LoadGen ran and judged it on this row (``bench.scenarios``); ``accuracy``: LoadGen's
    accuracy run over every evaluation sample, its logged outputs scored by the row's evaluator."""

    scenario: Literal["single_stream", "multi_stream", "offline", "server", "accuracy"]
    valid: bool | None = Field(None, description="LoadGen's VALID / INVALID; None where it did not run.")
    invalid_reason: str | None = Field(None, description="Why LoadGen said INVALID, from its own log.")
    headline: str | None = Field(
        None,
        description="MLPerf's headline: p90 latency (SingleStream), p99 per-query latency (MultiStream), samples/s "
        "(Offline), scheduled QPS at the latency bound (Server).",
    )
    value: float | None = None
    unit: str | None = None
    queries: int | None = None
    percentiles_ms: dict[str, float] = Field({})
    early_stopping: str | None = Field(None, description="LoadGen's early-stopping estimates, its own words.")
    log_dir: str | None = Field(None, description="LoadGen's summary and detail logs, in the run folder.")
    target_qps: float | None = Field(None, description="Server: the highest rate LoadGen found VALID.")
    probes: list[ServerProbe] = Field([], description="Server: every rate the search tried.")
    search: str | None = Field(None, description="Server: how the rate was searched.")
    not_measured: str | None = Field(None, description="Why the scenario did not run, e.g. LoadGen not installed.")
    harness_value: float | None = Field(
        None, description="accuracy: the harness's own accuracy pass on the same samples, for comparison."
    )


class OperatorTime(StrictModel):
    """One op type of an operator profile: how many nodes of it ran per inference and the time they took."""

    op_type: str = Field(
        description="The runtime's own name: ONNX Runtime op (after its fusions, e.g. QLinearConv), "
        "OpenVINO node type, TFLite builtin op."
    )
    nodes: int = Field(ge=0, description="Nodes of this type per inference.")
    ms: float | None = Field(
        None,
        ge=0,
        description="Their time per inference (mean over the profiled runs, "
        "profiler overhead included); None where per-op time is not measured.",
    )
    share: float | None = Field(None, ge=0, le=1, description="Their share of the summed op time.")


class OperatorProfile(StrictModel):
    """Where a row's inference time goes, op type by op type: measured once per row in a separate phase of the
    benchmark process, after the timed, throughput and accuracy passes, on a session of its own (never inside the
    timed runs, whose numbers it cannot change)."""

    source: str = Field(description="What measured it, e.g. 'onnxruntime profiler', 'openvino performance counters'.")
    runs: int = Field(0, ge=0, description="Profiled inferences after a short warm-up; 0 where none was timed.")
    total_ms: float | None = Field(
        None,
        ge=0,
        description="Summed op time per inference (or, where per-op time is "
        "not measured, the mean inference time in the profiling phase).",
    )
    ops: list[OperatorTime] = Field(
        [], description="Every op type, the most time first (the most nodes first where time is not measured)."
    )
    quantized: bool = Field(False, description="The model holds quantize nodes or ran integer kernels.")
    qdq_nodes: dict[str, int] = Field(
        {},
        description="Quantize / dequantize nodes: for ONNX Runtime those that "
        "still ran after its fusions (QuantizeLinear, DequantizeLinear...); for OpenVINO "
        "the IR's FakeQuantize ops; for LiteRT the file's QUANTIZE / DEQUANTIZE ops.",
    )
    float_ops: dict[str, int] = Field(
        {},
        description="In a quantized model, the op types (node counts) that ran "
        "in floating point; empty for a float model.",
    )
    not_measured: str | None = Field(None, description="Why per-op time (or the whole profile) is missing.")
    notes: list[str] = Field([], description="Runtime facts, e.g. which delegate took the graph.")

    @property
    def timed(self) -> bool:
        return self.runs > 0 and any(op.ms is not None for op in self.ops)

    def top(self, count: int = 3) -> list[OperatorTime]:
        return self.ops[:count]


class Measurement(StrictModel):
    import_s: float = Field(description="Runtime import time (s): median over repetitions.")
    load_s: float = Field(description="Load and compile (cold start) time (s): median over repetitions.")
    first_inference_ms: float = Field(description="First inference after load (ms): median over repetitions.")
    latency_ms: LatencyStats
    throughput_per_s: float = Field(description="Single-stream: 1000 / mean latency.")
    model_memory_mb: float = Field(
        description="Model memory, the headline memory figure: the benchmark process's peak resident memory minus "
        "its peak right after the runtime import, i.e. what loading, compiling and running this model added "
        "(weights, compiled graph, arenas after the first inference, warm-up and the timed runs). The evaluation "
        "data is memory-mapped and read a sample at a time, and the throughput and accuracy passes run after the "
        "last reading, so none of the harness's own data counts."
    )
    runtime_import_mb: float = Field(
        description="What importing the runtime added to the process's peak: paid once per process by every "
        "model on this runtime, not by the model."
    )
    process_peak_mb: float = Field(
        description="The benchmark process's absolute peak resident memory (VmHWM) at the end of the timed runs: "
        "Python, numpy, the harness, the runtime and the model together. Not the model's cost."
    )
    quality: Quality = Field(description="The model's evaluator on this row's outputs.")
    fidelity: Fidelity
    runtime_info: dict[str, Any] = Field({})
    samples_ms: list[float] = Field(
        [],
        description="Every timed latency sample, repetition after repetition, in run order (for "
        "distributions); empty in older results.",
    )
    repetitions: list[Repetition] = Field([], description="One entry per fresh process; empty in older results.")
    memory: list[MemorySnapshot] = Field(
        [], description="Memory per phase, each figure the median over repetitions; empty in older results."
    )
    throughput: list[Throughput] = Field([], description="The throughput pass, one entry per configuration.")
    operator_profile: OperatorProfile | None = Field(
        None,
        description="Per-operator profile, from the first repetition's process (None when profiling is off "
        "or in older results).",
    )
    scenarios: list[ScenarioResult] = Field(
        [], description="MLPerf scenarios through LoadGen, from the first repetition's process (when asked for)."
    )
    padded_latency_ms: LatencyStats | None = Field(
        None,
        description="Token inputs: the same timed protocol with every sample padded to padded_length (how the data "
        "holds them); latency_ms is at each sample's own length. None for other models.",
    )
    padded_length: int | None = Field(None, description="The sequence length padded_latency_ms was measured at.")
    latency_by_length: list[LengthBucket] = Field(
        [], description="Token inputs: the timed calls' latency by their own input length, in power-of-two buckets."
    )

    @property
    def accuracy(self) -> float | None:
        """The evaluator's headline metric (the one the budget, verdict, Pareto front and gate use)."""
        return self.quality.value


class ResultRow(StrictModel):
    """One (model, variant, target) combination."""

    model: str
    variant: str
    target: str
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    artifact: str | None = Field(None, description="Runnable file, relative to the run folder.")
    size_bytes: int | None = None
    sha256: str | None = None
    threads: int | None = None
    measurement: Measurement | None = None
    warnings: list[str] = Field([], description="Problems a reader must see, e.g. an fp32 export that drifts.")
    lossless: bool = Field(
        False,
        description="The variant only exports or converts the model (no quantization, no fp16): the fp32 "
        "baseline that other variants on the same target are compared with.",
    )
    device: str | None = Field(
        None,
        description="The remote device (a recipe's 'devices:' entry) whose agent measured the row; None: this machine.",
    )
    emulated: str | None = Field(
        None,
        description="Why the row's timings are not device timings: its device is an emulator. Its fidelity and "
        "accuracy are real; its latency, throughput and memory are never compared with native rows.",
    )


class LayerSensitivity(StrictModel):
    """How much one quantizable layer matters to int8 accuracy, on the validation (calibration) split."""

    layer: str = Field(
        description="The layer's node name in the format quantized (ONNX node, OpenVINO op, TFLite tensor)."
    )
    op_type: str
    score: float = Field(description="What AccuracyControl.measure says; a higher score is a more sensitive layer.")
    metric: float | None = Field(
        None,
        description="The evaluator's metric with only this layer kept in float; None "
        "where the ranking ran no such model (a debugger's statistics).",
    )
    gain: float | None = Field(
        None, description="Metric recovered by keeping only this layer in float (metric − all-int8 metric)."
    )


class AccuracyTrial(StrictModel):
    """One model the accuracy-aware search quantized and validated."""

    float_layers: int = Field(description="How many of the most sensitive layers it kept in float.")
    metric: float = Field(description="The evaluator's headline metric on the validation split.")
    error: float | None = Field(None, description="Output error against fp32: Σ(out − ref)² / Σref².")
    predicted_error: float | None = Field(
        None,
        description="The error the ranking predicted for this trial (all-int8 error × Π(1 − share) over its float "
        "layers); None where the ranking is a debugger's score, not a share of the error.",
    )


class AccuracyControl(StrictModel):
    """An accuracy-aware int8 search: the sensitivity of each layer and which layers stayed float to keep the
    metric within ``max_drop`` of fp32. Judged on the calibration split, never on the evaluation split."""

    metric: str = Field(description="The evaluator's headline metric the budget applies to.")
    max_drop: float | None = Field(None, description="None: no budget, the layers were only ranked.")
    measure: str = Field(description="How layers were ranked, e.g. 'metric with only this layer in float'.")
    fp32: float = Field(description="The fp32 model's metric on the validation split.")
    all_int8: float = Field(description="The metric with every layer quantized.")
    final: float = Field(description="The metric of the model the pass returned.")
    met: bool = Field(description="Whether final ≥ fp32 − max_drop.")
    layers: int = Field(description="Quantizable layers in the model.")
    float_layers: list[str] = Field([], description="Layers kept in float in the returned model.")
    float_precision: str = Field("f32", description="What the layers kept in float compute in: f32, or bf16.")
    float_op_types: dict[str, int] = Field({}, description="Op types of the layers kept in float, counted.")
    latency_ratio: float | None = Field(
        None,
        description="Quick in-pass estimate (median of a few runs, not the benchmark protocol) of the returned "
        "model's latency over the all-int8 model's: what keeping layers in float cost in speed.",
    )
    sensitivity: list[LayerSensitivity] = Field([], description="Every layer ranked, the most sensitive first.")
    trials: list[AccuracyTrial] = Field([])
    all_float: AccuracyTrial | None = Field(
        None,
        description="The model with every quantized op in float, checked to equal fp32 before the search (the pass "
        "fails, naming what stayed quantized, when it does not); None when no search or ranking ran.",
    )
    ranking_agreement: float | None = Field(
        None,
        description="Spearman correlation between the trials' predicted and measured errors: 1 when keeping more "
        "of the ranked layers in float lowered the error as the ranking said; None below three predictions.",
    )
    final_interval: tuple[float, float] | None = Field(
        None,
        description="95 % bootstrap interval of the final metric over the calibration samples: a budget met on a "
        "hundred samples is met within this much.",
    )


class PassRecord(StrictModel):
    """What one pass did to one model."""

    model: str
    variant: str | None = Field(None, description="None for passes shared by every variant.")
    name: str
    config: dict[str, Any]
    seconds: float = Field(description="Time the pass took when it ran (a cached step keeps its original time).")
    details: dict[str, Any] = Field({})
    accuracy_control: AccuracyControl | None = Field(
        None, description="An accuracy-aware int8 pass's sensitivity analysis and search (see AccuracyControl)."
    )
    cached: bool = Field(False, description="Reused from the step cache instead of run again.")


def _not_prepared() -> Quality:
    return Quality(evaluator="none", metric="none", not_measured="the model was not prepared")


class ModelRecord(StrictModel):
    """A model as it enters the variants (after the shared PyTorch passes): the fp32 reference every variant
    of it is compared with. A model that could not be prepared keeps only its name, source and ``failure``, so
    that the report can say why its rows are missing."""

    name: str
    source: str
    failure: str | None = Field(
        None, description="Why the model could not be prepared (its factory or data raised...); its rows all failed."
    )
    signature: Signature = Field(default_factory=lambda: Signature(inputs=[], outputs=[]))
    data_shapes: dict[str, list[int]] = Field(
        {}, description="Shape of each evaluation input as measured (symbolic axes resolved, e.g. the sequence length)."
    )
    data_notes: list[str] = Field([], description="Facts about the evaluation data, e.g. real token counts.")
    evaluation_data: str | None = Field(
        None,
        description="Hex digest of the evaluation inputs and targets: two runs that differ here did not "
        "evaluate on the same data, so their accuracies cannot be compared.",
    )
    parameters: int | None = None
    reference: Quality = Field(
        default_factory=_not_prepared, description="The evaluator on the fp32 reference's own outputs."
    )

    @property
    def reference_accuracy(self) -> float | None:
        return self.reference.value


class RunResults(StrictModel):
    schema_version: int = SCHEMA_VERSION
    name: str
    created_at: str
    recipe: dict[str, Any]
    recipe_text: str
    environment: dict[str, Any]
    benchmark: dict[str, Any] = Field({}, description="The benchmark protocol as it ran (profile resolved).")
    models: list[ModelRecord]
    passes: list[PassRecord]
    rows: list[ResultRow]
    devices: dict[str, dict[str, Any]] = Field(
        {},
        description="Each remote device's own description, as its agent gave it: architecture, CPU model and "
        "flags, cores, memory, runtime versions, the targets it can run, whether it is emulated.",
    )
    parallel_devices: list[str] = Field(
        [],
        description="The remote devices whose rows were measured at the same time, after the local rows (one job at a "
        "time on each device); empty when one device or none measured rows.",
    )

    @model_validator(mode="after")
    def _rows_name_known_models(self) -> RunResults:
        known = {model.name for model in self.models}
        for index, row in enumerate(self.rows):
            if row.model not in known:
                raise ValueError(f"rows[{index}].model {row.model!r} is not in models ({', '.join(sorted(known))})")
        return self
