"""The ONNX step graph, emitted from a :class:`~failguard.core.MonitorSpec`.

Given each indicator's raw-score tensor (from the score subgraphs), this writes the part of the
monitor step that the kernel (:mod:`failguard.core.kernel`) computes in numpy, reading every
number from the spec: the window update (``sum`` / ``mean``: an (N, w) buffer of raw scores,
oldest first; ``cumulative``: an (N, 1) running total), the threshold γ = table[group,
min(t, L - 1)], the ratio, the fusion (AND = Min, OR = Max, k-of-n = TopK), the alarm rule
and the non-finite flag, and the packed ``report`` output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.kernel import fusion_rank
from ._builder import BOOL, DOUBLE, Builder

if TYPE_CHECKING:
    from ..core.spec import MonitorSpec

__all__ = ["emit_step"]

_INT64_MIN = -(2**63)


def _fuse(g: Builder, ratios: list[str], combine: str) -> str:
    """AND = Min, OR = Max, k-of-n = the k-th largest ratio (TopK over the stacked legs)."""
    n = len(ratios)
    if n == 1:
        return ratios[0]
    k = fusion_rank(combine, n)
    if k == n:
        return g.op("Min", *ratios)
    if k == 1:
        return g.op("Max", *ratios)
    stacked = g.op("Concat", *[g.op("Unsqueeze", r, g.i64([0])) for r in ratios], axis=0)
    top = g.ops("TopK", [stacked, g.i64([k])], 2, axis=0, largest=1, sorted=1)[0]
    return g.op("Squeeze", g.op("Slice", top, g.i64([k - 1]), g.i64([k]), g.i64([0])), g.i64([0]))


def _window(
    g: Builder, spec: MonitorSpec, name: str, col: str, n_terms: dict[int, str]
) -> tuple[str, str]:
    """(windowed value, next state) of one indicator's window, fed this step's (N, 1) score."""
    state = f"state_{name}"
    if spec.window_kind == "cumulative":
        new_state = g.op("Add", state, col)
        return g.op("Squeeze", new_state, g.i64([1])), new_state
    w = spec.windows[name]
    if w == 1:
        new_state = col
    else:
        keep = g.op("Slice", state, g.i64([1]), g.i64([w]), g.i64([1]))
        new_state = g.op("Concat", keep, col, axis=1)
    windowed = g.op("ReduceSum", new_state, g.i64([1]), keepdims=0)
    if spec.window_kind == "mean":
        if w not in n_terms:
            count = g.op("Min", g.op("Add", "t", g.i64(1)), g.i64(w))
            n_terms[w] = g.op("Cast", count, to=DOUBLE)
        windowed = g.op("Div", windowed, n_terms[w])
    return windowed, new_state


def emit_step(
    g: Builder, spec: MonitorSpec, raw: dict[str, str], overflows: list[str]
) -> tuple[list[Any], list[Any]]:
    """Emit the step graph after the score subgraphs.

    Parameters
    ----------
    g : Builder
    spec : MonitorSpec
    raw : dict name -> tensor
        Each indicator's (N,) float64 raw score.
    overflows : list of tensors
        (N,) bool flags of score subgraphs whose inputs could not be scored exactly.

    Returns
    -------
    (inputs, outputs)
        The value infos of the state inputs and of every output it names.
    """
    from onnx import helper

    inputs, outputs = [], []
    width = spec.state_widths
    for n in spec.names:
        inputs.append(helper.make_tensor_value_info(f"state_{n}", DOUBLE, ["N", width[n]]))
    ratios: list[str] = []
    parts: dict[str, tuple[str, str, str, str]] = {}
    clipped_t: dict[int, str] = {}
    n_terms: dict[int, str] = {}
    nonfinite_of: dict[str, str] = {}
    for n in spec.names:
        # a NaN or inf score enters its window as +inf, never NaN, and flags the step
        finite = g.op("Not", g.op("Or", g.op("IsNaN", raw[n]), g.op("IsInf", raw[n])))
        nonfinite_of[n] = g.op("Not", finite)
        safe = g.op("Where", finite, raw[n], g.f64(np.inf))
        windowed, new_state = _window(g, spec, n, g.op("Unsqueeze", safe, g.i64([1])), n_terms)
        # γ = table[group, min(t, L - 1)]: the last value is repeated past the table's end
        table = spec.thresholds[n]
        length = table.shape[1]
        if length == 1:
            idx = "group"
        else:
            if length not in clipped_t:
                clipped_t[length] = g.op("Min", "t", g.i64(length - 1))
            idx = clipped_t[length]
            if table.shape[0] > 1:
                idx = g.op("Add", g.op("Mul", "group", g.i64(length)), idx)
        gamma = g.op("Gather", g.const(table.reshape(-1), np.float64, f"thresholds_{n}"), idx)
        ratio = g.op("Div", windowed, gamma)
        ratios.append(ratio)
        parts[n] = (raw[n], windowed, gamma, ratio)
        for label, src in zip(("score", "windowed", "threshold", "ratio"), parts[n], strict=True):
            g.name_output(src, f"{label}_{n}")
            outputs.append(helper.make_tensor_value_info(f"{label}_{n}", DOUBLE, ["N"]))
        g.name_output(new_state, f"new_state_{n}")
        outputs.append(helper.make_tensor_value_info(f"new_state_{n}", DOUBLE, ["N", width[n]]))
    fused = _fuse(g, ratios, spec.combine)
    g.name_output(fused, "fused_ratio")
    nonfinite = g.op("IsNaN", fused)
    for n in spec.names:
        nonfinite = g.op("Or", nonfinite, nonfinite_of[n])
    g.name_output(nonfinite, "nonfinite")
    g.name_output(g.op("Or", g.op("Greater", fused, g.f64(1.0)), nonfinite), "alarm")
    if overflows:
        flag = overflows[0]
        for other in overflows[1:]:
            flag = g.op("Or", flag, other)
    else:
        flag = g.op("Less", "t", g.i64(_INT64_MIN))  # never true; keeps the output present
    g.name_output(flag, "overflow")
    # every per-step float in one output, [score, windowed, threshold, ratio] per indicator and
    # then the fused ratio, each block N long: one output to fetch instead of 4k + 1
    report = [src for n in spec.names for src in parts[n]]
    g.name_output(g.op("Concat", *report, fused, axis=0), "report")
    outputs += [
        helper.make_tensor_value_info("fused_ratio", DOUBLE, ["N"]),
        helper.make_tensor_value_info("alarm", BOOL, ["N"]),
        helper.make_tensor_value_info("overflow", BOOL, ["N"]),
        helper.make_tensor_value_info("nonfinite", BOOL, ["N"]),
        helper.make_tensor_value_info("report", DOUBLE, ["R"]),
    ]
    return inputs, outputs
