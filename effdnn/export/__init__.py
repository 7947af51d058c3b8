"""Export to ONNX (and, with the quantization package, QDQ graphs that onnxruntime runs)."""
from .onnx import export_onnx, run_onnx

__all__ = ["export_onnx", "run_onnx"]
