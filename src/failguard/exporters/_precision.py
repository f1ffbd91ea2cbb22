"""Reduced-precision weights for an exported monitor: ``export_onnx(..., weights=...)``.

Only the dense layers change (every ``Gemm`` with a constant float32 weight: RND's target and
predictor, a progress head); windows, thresholds, ACE and every other number keep their
precision, so only the RND-type scores move, and the calibration tables stay as fitted.

* ``"fp32"``: the graph as built (the default).
* ``"fp16"``: each such weight and bias stored as float16, cast back to float32 by the graph
  (onnxruntime folds the casts when it loads the model). The file shrinks by about half and the
  products are those of the float16-rounded weights; on CPU the step is as fast as float32.
* ``"int8"``: onnxruntime's dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``:
  int8 weights per output channel, the activations quantised per step). A quarter of the
  weight memory, so a memory-bound (paper-size) RND runs several times faster.

Either choice changes the RND score a little, so alarms near the threshold can flip:
docs/BENCHMARKS.md measures the agreement with float32.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..exceptions import ExportError

if TYPE_CHECKING:
    import onnx

#: Accepted values of ``weights``.
WEIGHTS = ("fp32", "fp16", "int8")


def check_weights(weights: object) -> str:
    if weights not in WEIGHTS:
        raise ExportError(
            f"The 'weights' parameter of export_onnx must be one of {WEIGHTS}. "
            f"Got {weights!r} instead."
        )
    return str(weights)


def _dense_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``Gemm`` nodes whose weight (input 1) is a float32 initializer, named uniquely."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Gemm" or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or w.data_type != 1:  # onnx.TensorProto.FLOAT
            continue
        if not node.name:
            node.name = f"dense_{i}"
        nodes.append(node)
    return nodes


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store every dense weight and bias as float16 with a ``Cast`` back to float32."""
    from onnx import TensorProto, helper, numpy_helper

    out = type(model)()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    casts: list[onnx.NodeProto] = []
    done: dict[str, str] = {}
    for node in _dense_nodes(out):
        for slot in (1, 2):
            if slot >= len(node.input) or node.input[slot] not in inits:
                continue
            name = node.input[slot]
            if name not in done:
                tensor = inits[name]
                half = numpy_helper.from_array(
                    numpy_helper.to_array(tensor).astype(np.float16), f"{name}_fp16"
                )
                tensor.CopyFrom(half)
                done[name] = f"{name}_fp32"
                casts.append(
                    helper.make_node("Cast", [half.name], [done[name]], to=TensorProto.FLOAT)
                )
            node.input[slot] = done[name]
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(casts + nodes)  # initializer casts first: topological order
    return out


def _gemm_to_matmul(model: onnx.ModelProto) -> list[str]:
    """Rewrite each dense ``Gemm`` (alpha = beta = 1) as a named ``MatMul`` + ``Add`` (the form
    onnxruntime's dynamic quantisation handles); returns the ``MatMul`` names."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    rewritten: dict[str, list[onnx.NodeProto]] = {}
    names = []
    for node in _dense_nodes(model):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA"):
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB"):
            w = np.ascontiguousarray(w.T)
        weight = numpy_helper.from_array(w.astype(np.float32), f"{node.name}_weight")
        model.graph.initializer.append(weight)
        product = f"{node.name}_product"
        steps = [
            helper.make_node("MatMul", [node.input[0], weight.name], [product], name=node.name)
        ]
        if len(node.input) > 2 and node.input[2]:
            steps.append(helper.make_node("Add", [product, node.input[2]], list(node.output)))
        else:
            steps[0].output[0] = node.output[0]
        rewritten[node.name] = steps
        names.append(node.name)
    nodes = []
    for node in model.graph.node:
        nodes.extend(rewritten.get(node.name, [node]) if node.name else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used or _in_subgraph(model, t.name)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return names


def _in_subgraph(model: onnx.ModelProto, name: str) -> bool:
    from onnx import helper

    for node in model.graph.node:
        for a in node.attribute:
            if a.type == a.GRAPH:
                g = helper.get_attribute_value(a)
                if any(name in n.input for n in g.node):
                    return True
    return False


def to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's dynamic int8 quantisation of the dense layers (per output channel)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = type(model)()
    work.CopyFrom(model)
    names = _gemm_to_matmul(work)
    if not names:
        raise ExportError(
            "export_onnx(weights='int8'): the detector has no dense layer to quantise (no RND "
            "or progress head); export it with weights='fp32'."
        )
    props = {p.key: p.value for p in work.metadata_props}
    quiet = logging.getLogger()
    level = quiet.level
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(work, str(src))
        quiet.setLevel(logging.ERROR)  # its advice to pre-process concerns image models
        try:
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=names,
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
        finally:
            quiet.setLevel(level)
        out = onnx.load(str(dst))
    # the metadata (calibration facts, checksum slot) travels unchanged
    del out.metadata_props[:]
    for key, value in props.items():
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    return out


def reduce_precision(model: onnx.ModelProto, weights: str) -> onnx.ModelProto:
    """``model`` with its dense weights in ``weights`` precision (see the module docstring)."""
    import json

    weights = check_weights(weights)
    if weights == "fp32":
        return model
    out = to_fp16(model) if weights == "fp16" else to_int8(model)
    for p in out.metadata_props:
        if p.key == "failguard":
            meta = json.loads(p.value)
            meta["weights"] = weights
            p.value = json.dumps(meta)
    return out
