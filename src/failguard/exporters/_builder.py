"""The ONNX graph builder that the step graph and every score's ``onnx_graph`` hook write into.

A score's hook receives a :class:`Builder` ``g`` and writes its subgraph node by node:
``g.op(op_type, *inputs, **attrs)`` adds a node and returns its output name, constants become
initializers (``g.f32``, ``g.f64``, ``g.i64``, ``g.const``), graph inputs are named after the
rollout fields (``"embeddings"``, ``"action_samples"``, ...) plus ``"t"``, and a score that
keeps state across steps declares it with :meth:`Builder.state` and hands back its next value
with :meth:`Builder.update_state`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import ExportError

if TYPE_CHECKING:
    import onnx

__all__ = ["BOOL", "DOUBLE", "FLOAT", "INT64", "Builder", "int64_tensor"]

FLOAT = 1  # onnx.TensorProto.FLOAT
INT64 = 7
BOOL = 9
DOUBLE = 11


def int64_tensor(value: int) -> Any:
    """A one-element int64 tensor attribute (for ``ConstantOfShape``)."""
    from onnx import helper

    return helper.make_tensor("value", INT64, [1], [value])


class Builder:
    """A tiny graph builder: constants become initializers, every op gets a fresh name."""

    #: ONNX element types, for ``Cast(..., to=g.DOUBLE)`` in a score's hook
    FLOAT = FLOAT
    INT64 = INT64
    BOOL = BOOL
    DOUBLE = DOUBLE

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
