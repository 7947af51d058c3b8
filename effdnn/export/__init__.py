"""Export to ONNX (and, with the quantization package, QDQ graphs that onnxruntime runs)."""
from .onnx import export_onnx, run_onnx
from .qdq import op_counts, ort_fused_ops, prediction_agreement

__all__ = ["export_onnx", "op_counts", "ort_fused_ops", "prediction_agreement", "run_onnx"]
