"""Graph pieces the built-in scores' ``onnx_graph`` hooks share (entropy of sorted keys, ...).

Each function writes into a :class:`~failguard.exporters._builder.Builder` and knows nothing
about any score class; the scores call them from their own hooks (ACE and the discrete
entropies in :mod:`failguard.scores.entropy`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._builder import DOUBLE, INT64, Builder, int64_tensor

__all__ = [
    "KEY_BITS",
    "ace_keys",
    "dense_rank",
    "entropy_table",
    "logits_entropy",
    "sorted_run_entropy",
]

#: ACE keys are exact float64 integers: at most ``2 ** floor(53 / D)`` cells per axis.
KEY_BITS = 53


def entropy_table(b: int) -> NDArray[np.float64]:
    """-p log2 p for p = c / b, c = 0 … b (0 for c = 0), exactly as numpy computes it."""
    counts = np.arange(b + 1, dtype=np.float64)
    p = counts / b
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -p * np.log2(p)
    terms[0] = 0.0
    return np.asarray(terms, dtype=np.float64)


def ace_keys(g: Builder, cells: str, b: int, d: int) -> str:
    """One exact float64 key per point of (N, B, H, D) float32 cells: (N, B, H).

    Equal keys iff equal cells. The packed fixed-radix key when every cell index fits the
    radix; otherwise (an ``If`` decides at run time) a key built from per-axis dense ranks.
    """
    cells_d = g.op("Cast", cells, to=DOUBLE)
    if d == 1:  # the cell value itself: any float32 is an exact float64
        return g.op("Squeeze", cells_d, g.i64([3]))
    radix = 2 ** (KEY_BITS // d)

    def fast() -> str:
        weights = np.array([[float(radix) ** (d - 1 - k)] for k in range(d)], dtype=np.float64)
        packed = g.op("MatMul", cells_d, g.const(weights, np.float64, "ace_radix"))
        return g.op("Squeeze", packed, g.i64([3]))

    def exact() -> str:
        # dense ranks per axis (0 … B-1, exact for any float32 value, +inf included), packed
        # in base B and re-ranked before the packed key could pass 2^53
        key = ""
        bound = 0
        for k in range(d):
            col = g.op("Slice", cells_d, g.i64([k]), g.i64([k + 1]), g.i64([3]))
            rank = dense_rank(g, g.op("Squeeze", col, g.i64([3])), b, 1)
            if not key:
                key, bound = rank, b
                continue
            if bound * b > 2**KEY_BITS:
                key, bound = dense_rank(g, key, b, 1), b
            key = g.op("Add", g.op("Mul", key, g.f64(float(b))), rank)
            bound *= b
        return key

    # every cell index below the radix (a NaN or +inf cell fails the test): the packed key
    fits = g.op("Less", g.op("ReduceMax", cells, keepdims=0), g.f32(np.float32(radix)))
    return g.cond(fits, fast, exact, DOUBLE)


def dense_rank(g: Builder, x: str, b: int, axis: int) -> str:
    """Dense rank (0 = smallest) of each value along ``axis`` (of size b) of a rank-3 float64
    tensor, as float64: equal values get equal ranks, and every rank is below b."""
    ax = g.i64([axis])
    if b == 1:
        return g.op("Sub", x, x)
    sorted_x, order = g.ops("TopK", [x, g.i64([b])], 2, axis=axis, largest=0, sorted=1)
    step = g.op(
        "Greater",
        g.op("Slice", sorted_x, g.i64([1]), g.i64([b]), ax),
        g.op("Slice", sorted_x, g.i64([0]), g.i64([b - 1]), ax),
    )
    ranks = g.op("CumSum", g.op("Cast", step, to=DOUBLE), ax)  # ranks of sorted 1 … b-1
    pads = [0] * 6
    pads[axis] = 1
    ranks = g.op("Pad", ranks, g.i64(pads), g.f64(0.0))
    return g.op("ScatterElements", g.op("Sub", x, x), order, ranks, axis=axis)


def sorted_run_entropy(g: Builder, keys: str, b: int, axis: int) -> str:
    """Σ over rows of the base-2 entropy of the b keys along ``axis`` of a rank-3 float64
    tensor (N, ·, ·) of integer-valued keys; returns (N,) float64.

    Keys are sorted with ``TopK`` (float keys sort twice as fast as int64 ones in
    onnxruntime); a run of equal keys is one outcome, counted by ``CumSum`` +
    ``ScatterElements``, and the terms -p log2 p are read from a table.
    """
    ax = g.i64([axis])
    if b == 1:
        return g.op("ReduceSum", g.op("Sub", keys, keys), g.i64([1, 2]), keepdims=0)
    sorted_keys = g.ops("TopK", [keys, g.i64([b])], 2, axis=axis, largest=0, sorted=1)[0]
    # run id of each sorted key (0-based) = number of increases before it
    increase = g.op(
        "Greater",
        g.op("Slice", sorted_keys, g.i64([1]), g.i64([b]), ax),
        g.op("Slice", sorted_keys, g.i64([0]), g.i64([b - 1]), ax),
    )
    run_id = g.op("CumSum", g.op("Cast", increase, to=INT64), ax)
    pads = [0] * 6
    pads[axis] = 1
    run_id = g.op("Pad", run_id, g.i64(pads), g.i64(0))
    shape = g.op("Shape", run_id)
    zeros = g.op("ConstantOfShape", shape, value=int64_tensor(0))
    ones = g.op("ConstantOfShape", shape, value=int64_tensor(1))
    counts = g.op("ScatterElements", zeros, run_id, ones, axis=axis, reduction="add")
    terms = g.op("Gather", g.const(entropy_table(b), np.float64, "entropy_table"), counts)
    return g.op("ReduceSum", terms, g.i64([1, 2]), keepdims=0)


def logits_entropy(g: Builder, logits: str) -> str:
    """Exact base-2 Shannon entropy of softmax(logits) per robot, in float64: (N,)."""
    z = g.op("Cast", logits, to=DOUBLE)
    z = g.op("Sub", z, g.op("ReduceMax", z, g.i64([1]), keepdims=1))
    log_norm = g.op("Log", g.op("ReduceSum", g.op("Exp", z), g.i64([1]), keepdims=1))
    log_p = g.op("Sub", z, log_norm)
    total = g.op("ReduceSum", g.op("Mul", g.op("Exp", log_p), log_p), g.i64([1]), keepdims=0)
    return g.op("Div", g.op("Neg", total), g.f64(np.log(2.0)))
