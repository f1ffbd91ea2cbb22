"""The edge runtime: run an exported monitor with numpy and onnxruntime only.

Importing this package never imports torch (``failguard/__init__`` loads its torch-dependent
names lazily), so it runs on a robot that has only ``numpy`` and ``onnxruntime`` installed.

Examples
--------
>>> from failguard.runtime import OnnxMonitor
>>> mon = OnnxMonitor("monitor.onnx")  # doctest: +SKIP
>>> mon.reset()  # doctest: +SKIP
>>> mon.step(embedding=e, action_samples=a).alarm  # doctest: +SKIP
False
"""

from .monitor import BatchVerdict, OnnxMonitor

__all__ = ["BatchVerdict", "OnnxMonitor"]
