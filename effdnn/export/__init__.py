"""Export to ONNX (and, with the quantization package, QDQ graphs that onnxruntime runs)."""
from .deploy import Deployment, deploy
from .inference import StridedMaxPool2d, optimize_for_inference
from .onnx import OnnxModel, export_onnx, run_onnx
from .qdq import int8_fusion_saturates, op_counts, ort_fused_ops, prediction_agreement

__all__ = ["Deployment", "OnnxModel", "StridedMaxPool2d", "deploy", "export_onnx", "int8_fusion_saturates",
           "op_counts", "optimize_for_inference", "ort_fused_ops", "prediction_agreement", "run_onnx"]
