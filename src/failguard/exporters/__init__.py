"""Exporters: a calibrated detector's whole monitor step as a portable artifact.

:func:`export_onnx` writes one ``.onnx`` file that :class:`failguard.runtime.OnnxMonitor`
runs with numpy and onnxruntime only (no torch, no failguard scores).

Examples
--------
>>> from failguard.exporters import export_onnx  # doctest: +SKIP
>>> export_onnx(detector, "monitor.onnx")  # doctest: +SKIP
"""

from .onnx import METADATA_KEY, OPSET, ExportError, build_model, export_onnx

__all__ = ["METADATA_KEY", "OPSET", "ExportError", "build_model", "export_onnx"]
