"""Low-precision arithmetic for training: accumulation in narrow formats (chunk-based), emulated
reduced-precision GEMM layers, mixed precision with loss scaling, 8-bit floating-point training."""
from .accumulate import chunk_length, lowp_matmul, lowp_sum
from .gemm import GemmPolicy, LowpConv1d, LowpConv2d, LowpConv3d, LowpLinear, LowpStats, convert_layers
from .mixed_precision import DynamicLossScaler, LossScaleCallback

__all__ = ["DynamicLossScaler", "GemmPolicy", "LossScaleCallback", "LowpConv1d", "LowpConv2d", "LowpConv3d", "LowpLinear", "LowpStats",
           "chunk_length", "convert_layers", "lowp_matmul", "lowp_sum"]
