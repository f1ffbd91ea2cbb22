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
``overflow`` (N,) bool, true where the step cannot be scored as given: a float input holds
NaN or inf (the inputs listed under ``input_checks`` in the metadata), or a custom score's
``onnx_graph`` flagged its input (the built-in scores never do: ACE is exact at any finite
spread); the runtime then refuses that robot's step; and
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

from .._version import SCHEMA_VERSION, __version__
from ..exceptions import ExportError
from ._builder import DOUBLE as _DOUBLE
from ._builder import FLOAT as _FLOAT
from ._builder import INT64 as _INT64
from ._builder import Builder
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


# ---------------------------------------------------------------------- dispatch
def _has_graph(score: Any) -> bool:
    """Whether a score can be exported: it says so, and brings its ``onnx_graph`` hook."""
    return bool(getattr(score, "exportable", False)) and hasattr(score, "onnx_graph")


def _score_graph(g: Builder, score: Any) -> tuple[str, str | None]:
    """One score's subgraph: its (N,) float64 value and an optional (N,) bool overflow flag.

    The score writes it through its ``onnx_graph(builder, emit)`` hook, where
    ``emit(inner)`` builds a wrapped score's subgraph (graph inputs are named after the
    rollout fields, plus ``t``). The exporter never looks inside a score.
    """
    value, flag = score.onnx_graph(g, lambda inner: _score_graph(g, inner))
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
    # A float input that holds NaN or inf flags its robot (0 * x is NaN exactly there), so the
    # runtime's per-step path needs no numpy pass over the inputs; it then runs its full
    # checks, which name the problem, and applies nothing.
    checked = [f for f in spec.requires if _FIELD_TYPES[f] == _FLOAT]
    for f in checked:
        axes = list(range(1, 1 + len(shapes[f])))
        probe = g.op("ReduceSum", g.op("Mul", f, g.f32(np.float32(0.0))), g.i64(axes), keepdims=0)
        overflows.append(g.op("IsNaN", probe))
    for s in detector.scores:
        value, flag = _score_graph(g, s)
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
    meta["input_checks"] = checked  # inputs whose NaN/inf the graph flags in "overflow"
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


def export_onnx(
    detector: FailureDetector, path: str | os.PathLike[str], weights: str = "fp32"
) -> Path:
    """Write the whole monitor step of a calibrated detector to ONE ``.onnx`` file.

    The file holds every weight and table (no external data) and its metadata holds the
    calibration facts; :class:`failguard.runtime.OnnxMonitor` runs it with onnxruntime only.

    Parameters
    ----------
    detector : FailureDetector
        Fitted and calibrated; every score must be exportable (RND, ACE, discrete entropy).
    path : str or path-like
        Destination file, conventionally ``monitor.onnx``. Written atomically.
    weights : {"fp32", "fp16", "int8"}, default="fp32"
        Precision of the dense layers (RND's networks): ``"fp16"`` stores them as float16
        (half the file, the same speed on CPU), ``"int8"`` quantises them with onnxruntime's
        dynamic quantisation (a quarter of the weight memory: the paper-size RND runs several
        times faster). Both move the RND score slightly; docs/BENCHMARKS.md measures how often
        an alarm changes. Recorded in the metadata as ``weights``.

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
    from ._precision import check_weights, reduce_precision

    check_weights(weights)
    model = reduce_precision(build_model(detector), weights)
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
