"""Export to ONNX (and, with the quantization package, QDQ graphs that onnxruntime runs)."""
from .inference import StridedMaxPool2d, optimize_for_inference
from .onnx import OnnxModel, export_onnx, run_onnx
from .qdq import int8_fusion_saturates, op_counts, ort_fused_ops, prediction_agreement

__all__ = ["OnnxModel", "StridedMaxPool2d", "export_onnx", "int8_fusion_saturates", "optimize_for_inference", "op_counts", "ort_fused_ops", "prediction_agreement", "run_onnx"]
