"""Export a calibrated FailureDetector as one ONNX graph that computes a whole monitor step.

The graph is written node by node with :mod:`onnx.helper` (no tracing), so every operation
and its floating-point order is chosen here to match the Python scores:

* RND: standardisation buffers, target and predictor MLPs (``Gemm`` + ``LeakyRelu``) and the
  L2 norm of the residual, in float32 like torch;
* ACE: grid cells in float32 with the same operation order as
  :func:`failguard.scores.entropy.ace_float_cells`, one exact float64 key per point (a packed
  fixed radix, or per-axis dense ranks when a cell index is too large to pack: an ``If``
  picks, so any finite spread is scored exactly), keys sorted with ``TopK`` (O(B log B) per
  chunk index), run lengths through ``CumSum`` + ``ScatterElements``, and the entropy terms
  ``-p log2 p`` read from a table computed in numpy;
* discrete entropy from logits (float64) or from sampled ids (the same sort / run-length core);
* windows (``sum`` / ``mean``: an (N, w) buffer of raw scores, oldest first; ``cumulative``: an
  (N, 1) running total), thresholds read from a (G, L) table at ``min(t, L - 1)`` (the "repeat
  the last value" rule) and row ``group`` (0 = pooled, then Mondrian groups in sorted order),
  ratios, and AND (min) / OR (max) fusion.

Graph inputs, N robots at once (N is dynamic):

=================== ====================== =========================================
name                shape / dtype          when
=================== ====================== =========================================
``embeddings``      (N, d) float32         a score reads embeddings
``action_samples``  (N, B, H, D) float32   ACE
``action_logits``   (N, K) float32         discrete entropy from logits
``action_ids``      (N, B) int64           discrete entropy from samples
``states``          (N, S) float32         ``Movement(source="states")``
``t``               (N,) int64             always: step index since reset
``group``           (N,) int64             always: threshold row (0 = pooled)
``state_<name>``    (N, w) float64         per indicator ((N, 1) for cumulative)
``hist_<k>``        (N, ...) float64       per-score state a score declared (see below)
=================== ====================== =========================================

A score that reads past steps (``Movement``'s lagged embedding, ``SlowingDown``'s trailing
window, ``ChunkConsistency``'s previous mean chunk, ``ProgressScore(mode="shortfall")``'s past
predictions) declares its state in its ``onnx_graph`` hook with ``builder.state(shape)``, which
returns the input name ``hist_<k>``, and hands back the next value with
``builder.update_state(name, tensor)`` (output ``new_hist_<k>``). The metadata lists them under
``score_states``; the runtime keeps them per robot like the window buffers, zero at a reset.

Outputs per indicator: ``score_<name>``, ``windowed_<name>``, ``threshold_<name>``,
``ratio_<name>`` (N,) float64 and ``new_state_<name>``; then ``fused_ratio`` (N,) float64 and
``alarm`` (N,) bool (``fused_ratio > 1``, or a non-finite score); ``nonfinite`` (N,) bool,
true where a score is NaN or inf (such a score enters its window as +inf, never NaN);
``overflow`` (N,) bool, kept for older runtimes and custom scores (a score's ``onnx_graph`` may
flag a step it cannot compute exactly, which the runtime then refuses; the built-in scores
never do: ACE is exact at any finite spread); and
``report`` ((4k + 1) N,) float64, the same per-step floats in one tensor (score, windowed,
threshold, ratio of each of the k indicators, then the fused ratio, each block N long), which
is what the runtime fetches.

The calibration facts (alpha, guarantee, rollout counts, thresholds, score names, failguard
version and schema version) are also written to the model's ``metadata_props`` under the key
``failguard`` as JSON, which is all :class:`failguard.runtime.OnnxMonitor` needs.

Numerical agreement with :class:`failguard.Monitor`: ACE cells, discrete-entropy keys, the
entropy terms, thresholds and the window buffers are the same numbers; RND's float32 matrix
products round differently from torch's (about 1e-7 relative), and float64 sums (over H,
over a window) may be added in another order (about 1e-16 relative). Scores therefore agree
to well within 1e-5, and alarms agree unless a ratio lies within such a rounding error of 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .._version import SCHEMA_VERSION, __version__
from ..exceptions import ExportError

if TYPE_CHECKING:
    import onnx

    from ..detector import FailureDetector

__all__ = [
    "METADATA_KEY",
    "OPSET",
    "ExportError",
    "build_model",
    "export_onnx",
    "serialize_with_checksum",
]

#: ONNX opset the graph is written in (``ScatterElements`` with ``reduction="add"`` needs 16+,
#: ``Reduce*`` with axes as an input 18+).
OPSET = 18
#: Key of the JSON metadata in ``metadata_props``.
METADATA_KEY = "failguard"
#: ACE keys are exact float64 integers: at most ``2 ** floor(53 / D)`` cells per axis.
_KEY_BITS = 53

_INT64_MIN = -(2**63)
_FLOAT = 1  # onnx.TensorProto.FLOAT
_INT64 = 7
_BOOL = 9
_DOUBLE = 11

_FIELD_SPECS: dict[str, tuple[int, str]] = {
    "embeddings": (_FLOAT, "(N, d)"),
    "action_samples": (_FLOAT, "(N, B, H, D)"),
    "action_logits": (_FLOAT, "(N, K)"),
    "action_ids": (_INT64, "(N, B)"),
    "states": (_FLOAT, "(N, S)"),
}


class _Builder:
    """A tiny graph builder: constants become initializers, every op gets a fresh name."""

    def __init__(self) -> None:
        import onnx

        self._onnx = onnx
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self._outputs: list[tuple[str, str]] = []
        #: ranks of the tensors whose rank a subgraph needs
        self.ranks: dict[str, int] = {}
        #: per-score state: (input name, per-robot shape), in declaration order
        self.states: list[tuple[str, tuple[int, ...]]] = []
        self.state_updates: dict[str, str] = {}

    def state(self, shape: Sequence[int]) -> str:
        """Declare a per-robot float64 state of ``shape`` (the robot axis is added in front).

        The graph takes it as input ``hist_<k>`` and must return its next value through
        :meth:`update_state`; the runtime keeps it per robot, zero at every reset (a score
        recognises its first step by ``t == 0``, not by the state's value).
        """
        dims = tuple(int(x) for x in shape)
        if not dims or min(dims) < 1:
            raise ExportError(f"a score declared a state of shape {dims}; every axis must be >= 1.")
        name = f"hist_{len(self.states)}"
        self.states.append((name, dims))
        return name

    def update_state(self, name: str, value: str) -> None:
        """Set the next value of the state ``name`` (output ``new_<name>``)."""
        if name in self.state_updates or not any(n == name for n, _ in self.states):
            raise ExportError(f"state {name!r} is unknown or updated twice.")
        self.state_updates[name] = value

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, dtype: Any, hint: str = "c") -> str:
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        if arr.size <= 64 and key in self._consts:
            return self._consts[key]
        name = self._name(hint)
        self.initializers.append(self._onnx.numpy_helper.from_array(arr, name))
        if arr.size <= 64:
            self._consts[key] = name
        return name

    def f32(self, value: Any) -> str:
        return self.const(value, np.float32)

    def f64(self, value: Any) -> str:
        return self.const(value, np.float64)

    def i64(self, value: Any) -> str:
        return self.const(value, np.int64)

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs: Any) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs: Any) -> list[str]:
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

    def cond(self, flag: str, then: Any, other: Any, elem: int) -> str:
        """An ``If`` on the scalar bool ``flag``: the value ``then()`` or ``other()`` builds.

        Each callable adds its nodes through this builder (they land in its branch) and
        returns the branch's value; constants stay initializers of the main graph.
        """
        helper = self._onnx.helper

        def branch(build: Any, name: str) -> Any:
            saved, self.nodes = self.nodes, []
            value = build()
            nodes, self.nodes = self.nodes, saved
            out = value
            if not any(value in n.output for n in nodes):  # an outer value: copy it in
                out = self._name(name)
                nodes.append(helper.make_node("Identity", [value], [out]))
            return helper.make_graph(
                nodes, name, [], [helper.make_tensor_value_info(out, elem, None)]
            )

        out = self._name("if")
        self.nodes.append(
            helper.make_node(
                "If",
                [flag],
                [out],
                then_branch=branch(then, "then"),
                else_branch=branch(other, "else"),
            )
        )
        return out

    def name_output(self, src: str, name: str) -> None:
        """Make graph output ``name`` hold ``src``; applied by :meth:`finish`."""
        self._outputs.append((src, name))

    def finish(self) -> None:
        """Rename each output's producer to the output name (Identity only for duplicates)."""
        renamed: dict[str, str] = {}
        for src, name in self._outputs:
            if src in renamed or not any(src in n.output for n in self.nodes):
                source = renamed.get(src, src)
                self.nodes.append(self._onnx.helper.make_node("Identity", [source], [name]))
                continue
            renamed[src] = name
        for node in self.nodes:
            for seq in (node.input, node.output):
                for i, value in enumerate(seq):
                    if value in renamed:
                        seq[i] = renamed[value]


# ---------------------------------------------------------------------- score subgraphs
def _rnd_graph(g: _Builder, score: Any, x: str) -> str:
    """s = ||f(z) - g(z)||_2 with z = (x - mean) * inv_std; float32, then cast to float64."""
    from torch import nn

    net = score.network_
    mean = net.mean.detach().cpu().numpy().astype(np.float32)
    inv_std = net.inv_std.detach().cpu().numpy().astype(np.float32)
    z = x
    if not (np.all(mean == 0) and np.all(inv_std == 1)):  # (x - 0) * 1 == x exactly
        z = g.op(
            "Mul",
            g.op("Sub", x, g.const(mean, np.float32, "rnd_mean")),
            g.const(inv_std, np.float32, "rnd_inv_std"),
        )

    def mlp(seq: Any) -> str:
        linears = [m for m in seq if isinstance(m, nn.Linear)]
        h = z
        for i, lin in enumerate(linears):
            w = lin.weight.detach().cpu().numpy().astype(np.float32)
            b = lin.bias.detach().cpu().numpy().astype(np.float32)
            h = g.op("Gemm", h, g.const(w, np.float32, "w"), g.const(b, np.float32, "b"), transB=1)
            if i < len(linears) - 1:
                h = g.op("LeakyRelu", h, alpha=0.01)
        return h

    residual = g.op("Sub", mlp(net.predictor), mlp(net.target))
    return g.op("Cast", g.op("ReduceL2", residual, g.i64([1]), keepdims=0), to=_DOUBLE)


def _int64_tensor(value: int) -> Any:
    from onnx import helper

    return helper.make_tensor("value", _INT64, [1], [value])


def _entropy_table(b: int) -> NDArray[np.float64]:
    """-p log2 p for p = c / b, c = 0 … b (0 for c = 0), exactly as numpy computes it."""
    counts = np.arange(b + 1, dtype=np.float64)
    p = counts / b
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -p * np.log2(p)
    terms[0] = 0.0
    return np.asarray(terms, dtype=np.float64)


def _ace_graph(g: _Builder, score: Any, a: str, shape: tuple[int, ...]) -> tuple[str, None]:
    """ACE per robot, (N,) float64: exact at any finite action spread, one sort per chunk index.

    Self-contained (reads only ``score.dims``, ``score.integrate_dt`` and ``score.cell_``), so
    it can move into the score's own ``onnx_graph`` hook unchanged. Two points share a cell iff
    their D float32 cell values ``floor((p - origin) / c)`` are equal, as in
    :func:`failguard.scores.entropy.ace_float_cells`; no value can overflow, so no step is
    refused.

    * Cells in float32 with the operations and order of ``ace_float_cells``.
    * One float64 key per point. Fast branch: a fixed radix ``R = 2^floor(53 / D)`` per axis and
      one ``MatMul`` (exact while every cell index is below R: about 250 times the fitted
      action range at D = 3). Otherwise, chosen at run time by an ``If``: per-axis dense ranks
      (one sort per axis), packed exactly, re-ranked whenever B^k would pass 2^53. Exact for
      every finite float32 cell value, including cells that overflow to +inf.
    * Counts: the keys sorted with ``TopK`` along B, run lengths by ``CumSum`` +
      ``ScatterElements``, the terms -p log2 p read from a table.

    With ``integrate_dt``, a chunk whose integrated positions overflow float32 gives NaN (as the
    Python score does), which the monitor then refuses or counts as an alarm.
    """
    b, h, d_full = shape
    pts = a
    d = d_full
    if score.dims is not None:
        pts = g.op("Gather", pts, g.i64(list(score.dims)), axis=3)
        d = len(score.dims)
    if score.integrate_dt is not None:
        pts = g.op("CumSum", g.op("Mul", pts, g.f32(np.float32(score.integrate_dt))), g.i64(2))
    # the same float32 operations, in the same order, as failguard.scores.entropy.ace_float_cells
    lo = g.op("ReduceMin", pts, g.i64([1]), keepdims=1)
    hi = g.op("ReduceMax", pts, g.i64([1]), keepdims=1)
    origin = g.op("Sub", lo, g.op("Mul", g.f32(np.float32(0.01)), g.op("Sub", hi, lo)))
    # the cell size tiled to (B, H, D): onnxruntime divides far faster without a short
    # innermost broadcast, and the quotient is the same IEEE division
    cell = np.broadcast_to(np.asarray(score.cell_, dtype=np.float32), (b, h, d))
    cells = g.op(
        "Floor", g.op("Div", g.op("Sub", pts, origin), g.const(cell, np.float32, "ace_cell"))
    )
    key = _ace_keys(g, cells, b, d)  # (N, B, H) float64, equal iff same cell
    total = _sorted_run_entropy(g, key, b, 1)  # (N,): Σ_h E_h
    ace = g.op("Div", total, g.f64(float(h)))  # the mean over h, as numpy takes it
    if score.integrate_dt is not None:
        # integrated positions that overflowed float32 leave no defined cell: NaN, as in Python
        # (0 * x is NaN exactly where x is not finite)
        probe = g.op("ReduceSum", g.op("Mul", pts, g.f32(0.0)), g.i64([1, 2, 3]), keepdims=0)
        ace = g.op("Where", g.op("IsNaN", probe), g.f64(np.nan), ace)
    return ace, None


def _ace_keys(g: _Builder, cells: str, b: int, d: int) -> str:
    """One exact float64 key per point of (N, B, H, D) float32 cells: (N, B, H).

    Equal keys iff equal cells. The packed fixed-radix key when every cell index fits the
    radix; otherwise (an ``If`` decides at run time) a key built from per-axis dense ranks.
    """
    cells_d = g.op("Cast", cells, to=_DOUBLE)
    if d == 1:  # the cell value itself: any float32 is an exact float64
        return g.op("Squeeze", cells_d, g.i64([3]))
    radix = 2 ** (_KEY_BITS // d)

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
            rank = _dense_rank(g, g.op("Squeeze", col, g.i64([3])), b, 1)
            if not key:
                key, bound = rank, b
                continue
            if bound * b > 2**_KEY_BITS:
                key, bound = _dense_rank(g, key, b, 1), b
            key = g.op("Add", g.op("Mul", key, g.f64(float(b))), rank)
            bound *= b
        return key

    # every cell index below the radix (a NaN or +inf cell fails the test): the packed key
    fits = g.op("Less", g.op("ReduceMax", cells, keepdims=0), g.f32(np.float32(radix)))
    return g.cond(fits, fast, exact, _DOUBLE)


def _dense_rank(g: _Builder, x: str, b: int, axis: int) -> str:
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
    ranks = g.op("CumSum", g.op("Cast", step, to=_DOUBLE), ax)  # ranks of sorted 1 … b-1
    pads = [0] * 6
    pads[axis] = 1
    ranks = g.op("Pad", ranks, g.i64(pads), g.f64(0.0))
    return g.op("ScatterElements", g.op("Sub", x, x), order, ranks, axis=axis)


def _sorted_run_entropy(g: _Builder, keys: str, b: int, axis: int) -> str:
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
    run_id = g.op("CumSum", g.op("Cast", increase, to=_INT64), ax)
    pads = [0] * 6
    pads[axis] = 1
    run_id = g.op("Pad", run_id, g.i64(pads), g.i64(0))
    shape = g.op("Shape", run_id)
    zeros = g.op("ConstantOfShape", shape, value=_int64_tensor(0))
    ones = g.op("ConstantOfShape", shape, value=_int64_tensor(1))
    counts = g.op("ScatterElements", zeros, run_id, ones, axis=axis, reduction="add")
    terms = g.op("Gather", g.const(_entropy_table(b), np.float64, "entropy_table"), counts)
    return g.op("ReduceSum", terms, g.i64([1, 2]), keepdims=0)


def _logits_entropy_graph(g: _Builder, logits: str) -> str:
    z = g.op("Cast", logits, to=_DOUBLE)
    z = g.op("Sub", z, g.op("ReduceMax", z, g.i64([1]), keepdims=1))
    log_norm = g.op("Log", g.op("ReduceSum", g.op("Exp", z), g.i64([1]), keepdims=1))
    log_p = g.op("Sub", z, log_norm)
    total = g.op("ReduceSum", g.op("Mul", g.op("Exp", log_p), log_p), g.i64([1]), keepdims=0)
    return g.op("Div", g.op("Neg", total), g.f64(np.log(2.0)))


def _fuse_graph(g: _Builder, ratios: list[str], combine: str) -> str:
    """AND = Min, OR = Max, k-of-n = the k-th largest ratio (TopK over the stacked legs)."""
    from ..core.kernel import fusion_rank

    n = len(ratios)
    k = fusion_rank(combine, n)
    if k == n:
        return g.op("Min", *ratios)
    if k == 1:
        return g.op("Max", *ratios)
    stacked = g.op("Concat", *[g.op("Unsqueeze", r, g.i64([0])) for r in ratios], axis=0)
    top = g.ops("TopK", [stacked, g.i64([k])], 2, axis=0, largest=1, sorted=1)[0]
    return g.op("Squeeze", g.op("Slice", top, g.i64([k - 1]), g.i64([k]), g.i64([0])), g.i64([0]))


# ---------------------------------------------------------------------- detector facts
def _groups(detector: FailureDetector) -> list[str | None]:
    """Threshold rows: pooled first, then the Mondrian groups in sorted order."""
    return [None, *sorted(detector.group_calibration_)] if detector.mondrian else [None]


def _threshold_table(
    detector: FailureDetector, name: str, groups: list[str | None]
) -> NDArray[np.float64]:
    """(G, L) table; shorter rows are padded with their last value (the same rule)."""
    rows = []
    for grp in groups:
        cal = detector.calibration_ if grp is None else detector.group_calibration_[grp]
        assert cal is not None
        rows.append(np.asarray(cal.tables[name], dtype=np.float64).reshape(-1))
    width = max(r.shape[0] for r in rows)
    return np.stack([np.concatenate([r, np.full(width - r.shape[0], r[-1])]) for r in rows])


def _has_graph(score: Any) -> bool:
    from ..scores import ActionChunkEntropy, DiscreteActionEntropy, RNDScore

    if not getattr(score, "exportable", False):
        return False
    builtin = isinstance(score, (RNDScore, ActionChunkEntropy, DiscreteActionEntropy))
    # a score that reads past steps keeps what it needs in a declared state (Builder.state)
    return builtin or hasattr(score, "onnx_graph")


def _score_graph(
    g: _Builder, score: Any, shapes: dict[str, tuple[int, ...]]
) -> tuple[str, str | None]:
    """One score's subgraph: its (N,) float64 value and an optional (N,) bool overflow flag.

    FIPER's scores are written here; any other score brings its own subgraph through an
    ``onnx_graph(builder, emit)`` method, where ``emit(score)`` builds a wrapped score's
    subgraph (graph inputs are named after the rollout fields, plus ``t``).
    """
    from ..scores import ActionChunkEntropy, DiscreteActionEntropy, RNDScore

    if isinstance(score, RNDScore):
        return _rnd_graph(g, score, "embeddings"), None
    if isinstance(score, ActionChunkEntropy):
        return _ace_graph(g, score, "action_samples", shapes["action_samples"])
    if isinstance(score, DiscreteActionEntropy):
        if score.source == "logits":
            return _logits_entropy_graph(g, "action_logits"), None
        ids = g.op("Cast", "action_ids", to=_DOUBLE)  # exact for |id| < 2**53
        rows = g.op("Unsqueeze", ids, g.i64([2]))  # (N, B, 1): one row of B draws
        return _sorted_run_entropy(g, rows, shapes["action_ids"][0], 1), None
    value, flag = score.onnx_graph(g, lambda inner: _score_graph(g, inner, shapes))
    return value, flag


def _check_exportable(detector: FailureDetector) -> None:
    bad = [f"{s.name} ({type(s).__name__})" for s in detector.scores if not _has_graph(s)]
    if bad:
        raise ExportError(
            f"export_onnx: these scores have no ONNX form: {', '.join(bad)}. Exportable scores "
            "are RNDScore, ActionChunkEntropy, DiscreteActionEntropy, ProgressScore "
            "(history=0), Movement, SlowingDown, ChunkConsistency and Deviation of an "
            "exportable score; monitor the others "
            "with failguard.Monitor in Python, or leave them out of the exported detector."
        )
    if not detector.is_calibrated:
        raise ExportError(
            "export_onnx: the detector is not calibrated. Call 'fit' and then 'calibrate' "
            "before exporting."
        )


def _metadata(
    detector: FailureDetector,
    groups: list[str | None],
    tables: dict[str, NDArray[np.float64]],
    states: Sequence[tuple[str, tuple[int, ...]]] = (),
) -> dict[str, Any]:
    shapes: dict[str, list[int]] = {}
    for s in detector.scores:
        for f, shp in (s.input_shapes_ or {}).items():
            shapes[f] = list(shp)
    cal = detector.calibration_
    assert cal is not None
    return {
        "schema": SCHEMA_VERSION,
        "failguard_version": __version__,
        "kind": "FailureDetectorMonitor",
        "names": detector.names,
        "score_types": {s.name: type(s).__name__ for s in detector.scores},
        "requires": list(detector.requires),
        "input_shapes": shapes,
        "windows": {n: int(w) for n, w in detector.windows.items()},
        "window_kind": detector.window_kind,
        "combine": detector.combine,
        "threshold": detector.threshold,
        "alpha": detector.alpha,
        "guarantee": detector.guarantee,
        "delta": detector.delta,
        "mode": detector.mode,
        "mondrian": detector.mondrian,
        "groups": [g for g in groups if g is not None],
        "n_fit": detector.n_fit_,
        "n_calibration": detector.n_calibration_,
        "n_conformal": cal.n_conformal,
        "thresholds": {n: t.tolist() for n, t in tables.items()},
        # per-score state (float64, zero at reset), graph input <name>, output new_<name>
        "score_states": [{"name": n, "shape": list(shp)} for n, shp in states],
    }


# ---------------------------------------------------------------------- build and export
def build_model(detector: FailureDetector) -> onnx.ModelProto:
    """The ONNX model of one monitor step of ``detector`` (see the module docstring).

    Parameters
    ----------
    detector : FailureDetector
        A calibrated detector whose scores are all exportable.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ExportError
        If a score has no ONNX form or the detector is not calibrated.

    Examples
    --------
    >>> model = build_model(detector)  # doctest: +SKIP
    >>> [i.name for i in model.graph.input]  # doctest: +SKIP
    ['embeddings', 'action_samples', 't', 'group', 'state_rnd', 'state_ace']
    """
    import onnx
    from onnx import helper

    _check_exportable(detector)
    g = _Builder()
    shapes: dict[str, tuple[int, ...]] = {}
    for s in detector.scores:
        shapes.update(s.input_shapes_ or {})
    inputs = []
    for f in detector.requires:
        elem, _ = _FIELD_SPECS[f]
        inputs.append(helper.make_tensor_value_info(f, elem, ["N", *shapes[f]]))
    inputs.append(helper.make_tensor_value_info("t", _INT64, ["N"]))
    inputs.append(helper.make_tensor_value_info("group", _INT64, ["N"]))
    width = {
        n: 1 if detector.window_kind == "cumulative" else int(detector.windows[n])
        for n in detector.names
    }
    for n in detector.names:
        inputs.append(helper.make_tensor_value_info(f"state_{n}", _DOUBLE, ["N", width[n]]))

    raw: dict[str, str] = {}
    overflows: list[str] = []
    for s in detector.scores:
        value, flag = _score_graph(g, s, shapes)
        raw[s.name] = value
        if flag is not None:
            overflows.append(flag)

    groups = _groups(detector)
    tables = {n: _threshold_table(detector, n, groups) for n in detector.names}
    outputs = []
    ratios: list[str] = []
    clipped_t: dict[int, str] = {}
    windowed_of: dict[str, str] = {}
    gamma_of: dict[str, str] = {}
    ratio_of: dict[str, str] = {}
    n_terms: dict[int, str] = {}
    # A non-finite score (an extreme input overflowed a network) enters its window as +inf,
    # never as NaN, and flags the step: the runtime refuses it, or counts it as an alarm.
    nonfinite_of: dict[str, str] = {}
    for n in detector.names:
        finite = g.op("Not", g.op("Or", g.op("IsNaN", raw[n]), g.op("IsInf", raw[n])))
        nonfinite_of[n] = g.op("Not", finite)
        safe = g.op("Where", finite, raw[n], g.f64(np.inf))
        col = g.op("Unsqueeze", safe, g.i64([1]))
        state = f"state_{n}"
        if detector.window_kind == "cumulative":
            new_state = g.op("Add", state, col)
            windowed = g.op("Squeeze", new_state, g.i64([1]))
        else:
            w = width[n]
            if w == 1:
                new_state = col
            else:
                keep = g.op("Slice", state, g.i64([1]), g.i64([w]), g.i64([1]))
                new_state = g.op("Concat", keep, col, axis=1)
            windowed = g.op("ReduceSum", new_state, g.i64([1]), keepdims=0)
            if detector.window_kind == "mean":
                if w not in n_terms:
                    count = g.op("Min", g.op("Add", "t", g.i64(1)), g.i64(w))
                    n_terms[w] = g.op("Cast", count, to=_DOUBLE)
                windowed = g.op("Div", windowed, n_terms[w])
        # γ = table[group, min(t, L - 1)]: the last value is repeated past the table's end
        table = tables[n]
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
        windowed_of[n], gamma_of[n], ratio_of[n] = windowed, gamma, ratio
        for label, src in (
            ("score", raw[n]),
            ("windowed", windowed),
            ("threshold", gamma),
            ("ratio", ratio),
        ):
            g.name_output(src, f"{label}_{n}")
            outputs.append(helper.make_tensor_value_info(f"{label}_{n}", _DOUBLE, ["N"]))
        g.name_output(new_state, f"new_state_{n}")
        outputs.append(helper.make_tensor_value_info(f"new_state_{n}", _DOUBLE, ["N", width[n]]))
    # elementwise over indicators: AND = min, OR = max, k-of-n = k-th largest
    fused = ratios[0] if len(ratios) == 1 else _fuse_graph(g, ratios, detector.combine)
    g.name_output(fused, "fused_ratio")
    nonfinite = g.op("IsNaN", fused)
    for n in detector.names:
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
    report = [
        src for n in detector.names for src in (raw[n], windowed_of[n], gamma_of[n], ratio_of[n])
    ]
    g.name_output(g.op("Concat", *report, fused, axis=0), "report")
    for name, shp in g.states:
        if name not in g.state_updates:
            raise ExportError(f"export_onnx: a score declared state {name!r} but never updated it.")
        inputs.append(helper.make_tensor_value_info(name, _DOUBLE, ["N", *shp]))
        g.name_output(g.state_updates[name], f"new_{name}")
        outputs.append(helper.make_tensor_value_info(f"new_{name}", _DOUBLE, ["N", *shp]))
    g.finish()
    outputs += [
        helper.make_tensor_value_info("fused_ratio", _DOUBLE, ["N"]),
        helper.make_tensor_value_info("alarm", _BOOL, ["N"]),
        helper.make_tensor_value_info("overflow", _BOOL, ["N"]),
        helper.make_tensor_value_info("nonfinite", _BOOL, ["N"]),
        helper.make_tensor_value_info("report", _DOUBLE, ["R"]),
    ]
    graph = helper.make_graph(g.nodes, "failguard_monitor_step", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="failguard",
        producer_version=__version__,
        doc_string=(
            "failguard monitor step: scores, causal windows, conformal thresholds and "
            f"{detector.combine.upper()} fusion for indicators {detector.names}. Higher means "
            "more likely to fail; alarm = fused_ratio > 1."
        ),
    )
    model.ir_version = min(model.ir_version, 9)
    meta = _metadata(detector, groups, tables, g.states)
    helper.set_model_props(
        model,
        {
            METADATA_KEY: json.dumps(meta),
            "failguard.schema_version": str(SCHEMA_VERSION),
            "failguard.version": __version__,
            "failguard.names": ",".join(detector.names),
            "failguard.alpha": repr(detector.alpha),
            "failguard.guarantee": detector.guarantee,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(detector: FailureDetector, path: str | os.PathLike[str]) -> Path:
    """Write the whole monitor step of a calibrated detector to ONE ``.onnx`` file.

    The file holds every weight and table (no external data) and its metadata holds the
    calibration facts; :class:`failguard.runtime.OnnxMonitor` runs it with onnxruntime only.

    Parameters
    ----------
    detector : FailureDetector
        Fitted and calibrated; every score must be exportable (RND, ACE, discrete entropy).
    path : str or path-like
        Destination file, conventionally ``monitor.onnx``. Written atomically.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ExportError
        If a score cannot be exported (STAC, PCA-kmeans, logpZO, RND-A) or the detector is
        not calibrated.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from failguard import FailureDetector, RNDScore, ActionChunkEntropy
    >>> from failguard.synthetic import make_rollouts
    >>> det = FailureDetector([RNDScore(max_epochs=2), ActionChunkEntropy()], alpha=0.1)
    >>> det = det.fit(make_rollouts(6, seed=0, length=30), progress=False)
    >>> det = det.calibrate(make_rollouts(30, seed=1, length=30))
    >>> out = export_onnx(det, pathlib.Path(tempfile.mkdtemp()) / "monitor.onnx")
    >>> out.name
    'monitor.onnx'
    """
    from ..logs import _atomic_write_bytes

    model = build_model(detector)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out, serialize_with_checksum(model))
    return out


#: The checksum's place in the metadata JSON while the file is hashed (same length).
_PLACEHOLDER = "0" * 64


def _checksum_field(digest: str) -> bytes:
    return f'"sha256": "{digest}"'.encode()


def serialize_with_checksum(model: onnx.ModelProto) -> bytes:
    """The model's bytes, with a SHA-256 of the whole file in its failguard metadata.

    The digest is computed over the serialised file with the digest's own 64 characters set
    to zeros, then written in their place (same length, so every other byte is unchanged).
    :class:`failguard.runtime.OnnxMonitor` checks it with hashlib alone (no ``onnx``): it
    covers the graph, every weight and table, and the metadata.
    """
    import hashlib

    props = {p.key: p for p in model.metadata_props}
    meta = json.loads(props[METADATA_KEY].value)
    meta["sha256"] = _PLACEHOLDER
    props[METADATA_KEY].value = json.dumps(meta)
    raw = model.SerializeToString()
    if raw.count(_checksum_field(_PLACEHOLDER)) != 1:  # pragma: no cover - cannot happen
        raise ExportError("export_onnx: could not place the checksum in the metadata.")
    digest = hashlib.sha256(raw).hexdigest()
    meta["sha256"] = digest
    props[METADATA_KEY].value = json.dumps(meta)
    return raw.replace(_checksum_field(_PLACEHOLDER), _checksum_field(digest))
