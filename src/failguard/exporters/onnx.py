"""Export a calibrated FailureDetector as one ONNX graph that computes a whole monitor step.

The graph is written node by node with :mod:`onnx.helper` (no tracing), so every operation
and its floating-point order is chosen to match the Python scores. Three parts build it:

* the builder (:class:`failguard.exporters._builder.Builder`): fresh names, constants as
  initializers, per-score state;
* the score subgraphs: each score writes its own through its ``onnx_graph(builder, emit)``
  hook, so adding a score never touches the exporter (RND: standardisation buffers, target
  and predictor MLPs, ``Gemm`` + ``LeakyRelu``, the L2 norm of the residual, in float32 like
  torch);
* the step graph (:mod:`failguard.exporters._step`), emitted from the detector's
  :class:`~failguard.core.MonitorSpec`: windows, thresholds, ratios, fusion and the alarm.

Built-in subgraphs in more detail:

* ACE: grid cells in float32 with the same operation order as
  :func:`failguard.scores.entropy.ace_float_cells`, one exact float64 key per point (a packed
  fixed radix, or per-axis dense ranks when a cell index is too large to pack: an ``If``
  picks, so any finite spread is scored exactly), keys sorted with ``TopK`` (O(B log B) per
  chunk index), run lengths through ``CumSum`` + ``ScatterElements``, and the entropy terms
  ``-p log2 p`` read from a table computed in numpy;
* discrete entropy from logits (float64) or from sampled ids (the same sort / run-length core);
* the step: windows (``sum`` / ``mean``: an (N, w) buffer of raw scores, oldest first;
  ``cumulative``: an (N, 1) running total), thresholds read from a (G, L) table at
  ``min(t, L - 1)`` (the "repeat the last value" rule) and row ``group`` (0 = pooled, then
  Mondrian groups in sorted order), ratios, and AND (min) / OR (max) / k-of-n fusion.

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

A score that reads past steps (a lagged embedding, a trailing window, the previous mean
chunk, past progress predictions) declares its state in its ``onnx_graph`` hook with
``builder.state(shape)``, which returns the input name ``hist_<k>``, and hands back the next
value with
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

The detector's :class:`~failguard.core.MonitorSpec` (names, windows, fusion, thresholds,
groups, profiles, input shapes and the calibration facts: alpha, guarantee, rollout counts),
the failguard and schema versions and the score states are written to the model's
``metadata_props`` under the key ``failguard`` as JSON; :class:`failguard.runtime.OnnxMonitor`
reads the spec back from there (validated key by key).

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
from ._builder import DOUBLE as _DOUBLE
from ._builder import FLOAT as _FLOAT
from ._builder import INT64 as _INT64
from ._builder import Builder
from ._builder import int64_tensor as _int64_tensor
from ._step import emit_step

if TYPE_CHECKING:
    import onnx

    from ..core.spec import MonitorSpec
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

#: Element type of each graph input named after a rollout field.
_FIELD_TYPES: dict[str, int] = {
    "embeddings": _FLOAT,
    "action_samples": _FLOAT,
    "action_logits": _FLOAT,
    "action_ids": _INT64,
    "states": _FLOAT,
}
#: The builder under its former name (score subgraphs written before the split use it).
_Builder = Builder


# ---------------------------------------------------------------------- score subgraphs
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


# ---------------------------------------------------------------------- dispatch
def _builtin_graph(g: _Builder, score: Any, shapes: dict[str, tuple[int, ...]]) -> Any:
    """ACE and discrete entropy, until they carry their own ``onnx_graph`` hook."""
    from ..scores import ActionChunkEntropy, DiscreteActionEntropy

    if isinstance(score, ActionChunkEntropy):
        return _ace_graph(g, score, "action_samples", shapes["action_samples"])
    if isinstance(score, DiscreteActionEntropy):
        if score.source == "logits":
            return _logits_entropy_graph(g, "action_logits"), None
        ids = g.op("Cast", "action_ids", to=_DOUBLE)  # exact for |id| < 2**53
        rows = g.op("Unsqueeze", ids, g.i64([2]))  # (N, B, 1): one row of B draws
        return _sorted_run_entropy(g, rows, shapes["action_ids"][0], 1), None
    return None


def _has_graph(score: Any) -> bool:
    """Whether a score can be exported: it says so, and brings its ``onnx_graph`` hook."""
    if not getattr(score, "exportable", False):
        return False
    from ..scores import ActionChunkEntropy, DiscreteActionEntropy

    return hasattr(score, "onnx_graph") or isinstance(
        score, (ActionChunkEntropy, DiscreteActionEntropy)
    )


def _score_graph(
    g: Builder, score: Any, shapes: dict[str, tuple[int, ...]]
) -> tuple[str, str | None]:
    """One score's subgraph: its (N,) float64 value and an optional (N,) bool overflow flag.

    The score writes it through its ``onnx_graph(builder, emit)`` hook, where
    ``emit(inner)`` builds a wrapped score's subgraph (graph inputs are named after the
    rollout fields, plus ``t``). The exporter never looks inside a score.
    """
    if not hasattr(score, "onnx_graph"):
        return _builtin_graph(g, score, shapes)
    value, flag = score.onnx_graph(g, lambda inner: _score_graph(g, inner, shapes))
    return value, flag


def _check_exportable(detector: FailureDetector) -> None:
    bad = [f"{s.name} ({type(s).__name__})" for s in detector.scores if not _has_graph(s)]
    if bad:
        raise ExportError(
            f"export_onnx: these scores have no ONNX form: {', '.join(bad)}. A score exports "
            "when it is exportable and writes its subgraph in an onnx_graph hook (see "
            "failguard.exporters); monitor the others with failguard.Monitor in Python, or "
            "leave them out of the exported detector."
        )
    if not detector.is_calibrated:
        raise ExportError(
            "export_onnx: the detector is not calibrated. Call 'fit' and then 'calibrate' "
            "before exporting."
        )


def _metadata(spec: MonitorSpec, states: Sequence[tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """The model's failguard metadata: its MonitorSpec, plus versions and the score states."""
    return {
        "schema": SCHEMA_VERSION,
        "failguard_version": __version__,
        "kind": "FailureDetectorMonitor",
        **spec.to_dict(),
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
    spec = detector.spec()
    g = Builder()
    shapes = dict(spec.input_shapes)
    inputs = []
    for f in spec.requires:
        inputs.append(helper.make_tensor_value_info(f, _FIELD_TYPES[f], ["N", *shapes[f]]))
    inputs.append(helper.make_tensor_value_info("t", _INT64, ["N"]))
    inputs.append(helper.make_tensor_value_info("group", _INT64, ["N"]))

    raw: dict[str, str] = {}
    overflows: list[str] = []
    for s in detector.scores:
        value, flag = _score_graph(g, s, shapes)
        raw[s.name] = value
        if flag is not None:
            overflows.append(flag)
    state_inputs, outputs = emit_step(g, spec, raw, overflows)
    inputs += state_inputs
    for name, shp in g.states:
        if name not in g.state_updates:
            raise ExportError(f"export_onnx: a score declared state {name!r} but never updated it.")
        inputs.append(helper.make_tensor_value_info(name, _DOUBLE, ["N", *shp]))
        g.name_output(g.state_updates[name], f"new_{name}")
        outputs.append(helper.make_tensor_value_info(f"new_{name}", _DOUBLE, ["N", *shp]))
    g.finish()
    graph = helper.make_graph(g.nodes, "failguard_monitor_step", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="failguard",
        producer_version=__version__,
        doc_string=(
            "failguard monitor step: scores, causal windows, conformal thresholds and "
            f"{spec.combine.upper()} fusion for indicators {spec.names}. Higher means "
            "more likely to fail; alarm = fused_ratio > 1."
        ),
    )
    model.ir_version = min(model.ir_version, 9)
    meta = _metadata(spec, g.states)
    helper.set_model_props(
        model,
        {
            METADATA_KEY: json.dumps(meta),
            "failguard.schema_version": str(SCHEMA_VERSION),
            "failguard.version": __version__,
            "failguard.names": ",".join(spec.names),
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
