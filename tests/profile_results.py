"""Hand-built operator profiles and accuracy-control records for report tests (next to ``tests.results_factory``)."""

from __future__ import annotations

from edgecraft.core.results import (
    AccuracyControl,
    AccuracyTrial,
    LayerSensitivity,
    OperatorProfile,
    OperatorTime,
    PassRecord,
    ResultRow,
)


def profile(
    times: dict[str, tuple[int, float]],
    qdq: dict[str, int] | None = None,
    float_ops: dict[str, int] | None = None,
    source: str = "onnxruntime profiler",
) -> OperatorProfile:
    """A timed profile from ``{op_type: (nodes, ms per inference)}``; quantized when ``qdq`` is given."""
    total = sum(ms for _, ms in times.values())
    ops = sorted(
        (OperatorTime(op_type=name, nodes=nodes, ms=ms, share=ms / total) for name, (nodes, ms) in times.items()),
        key=lambda op: -op.ms,
    )
    return OperatorProfile(
        source=source,
        runs=10,
        total_ms=total,
        ops=ops,
        quantized=bool(qdq),
        qdq_nodes=qdq or {},
        float_ops=float_ops or {},
    )


def untimed(counts: dict[str, int], quantized: bool, total_ms: float = 1.0) -> OperatorProfile:
    """A LiteRT-like profile: op counts, no per-op time."""
    return OperatorProfile(
        source="litert op list",
        total_ms=total_ms,
        quantized=quantized,
        ops=[OperatorTime(op_type=name, nodes=count) for name, count in counts.items()],
        qdq_nodes={"QUANTIZE": 1, "DEQUANTIZE": 1} if quantized else {},
        not_measured="per-op time not measured: no op profiler in the Python interpreter",
    )


def with_profile(row: ResultRow, operator_profile: OperatorProfile) -> ResultRow:
    return row.model_copy(
        update={"measurement": row.measurement.model_copy(update={"operator_profile": operator_profile})}
    )


# An fp32 graph of convolutions, and its int8 QDQ version whose float convolutions and Q/DQ nodes cost more.
FP32 = profile({"Conv": (26, 1.40), "Mul": (5, 0.05), "GlobalAveragePool": (5, 0.04)})
INT8 = profile(
    {
        "Conv": (12, 1.90),
        "QuantizeLinear": (49, 0.80),
        "DequantizeLinear": (90, 0.60),
        "QLinearConv": (15, 0.30),
        "Mul": (13, 0.20),
        "GlobalAveragePool": (4, 0.02),
    },
    qdq={"QuantizeLinear": 49, "DequantizeLinear": 90},
    float_ops={"Conv": 12, "Mul": 13},
)


def accuracy_control(layers: int = 14, kept: int = 2, met: bool = True) -> AccuracyControl:
    """A search over ``layers`` ranked layers (layer-0 the most sensitive) that kept the first ``kept`` in float."""
    ranked = [
        LayerSensitivity(
            layer=f"/features/conv-{i}",
            op_type="Conv" if i % 3 else "Gemm",
            score=0.95 - 0.01 * i,
            gain=0.05 - 0.003 * i,
        )
        for i in range(layers)
    ]
    return AccuracyControl(
        metric="top-1 accuracy",
        max_drop=0.01,
        measure="metric with only this layer in float",
        fp32=0.97,
        all_int8=0.90,
        final=0.965 if met else 0.94,
        met=met,
        layers=layers,
        float_layers=[layer.layer for layer in ranked[:kept]],
        float_op_types={"Gemm": 1, "Conv": kept - 1} if kept > 1 else {"Gemm": kept},
        latency_ratio=1.15,
        sensitivity=ranked,
        trials=[
            AccuracyTrial(float_layers=0, metric=0.90),
            AccuracyTrial(float_layers=kept, metric=0.965 if met else 0.94),
        ],
    )


def controlled_pass(control: AccuracyControl, variant: str = "int8", model: str = "net") -> PassRecord:
    return PassRecord(
        model=model,
        variant=variant,
        name="quantize.static",
        config={"type": "quantize.static", "max_drop": control.max_drop},
        seconds=3.2,
        details={"calibration_samples": 64},
        accuracy_control=control,
    )
