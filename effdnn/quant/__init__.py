"""Quantization: observers (calibrators), fake-quantizers, quantized layers, PTQ, int8 deployment."""
from .calibrate import calibrate
from .config import TensorSpec
from .fake_quant import Quantizer
from .fold_bn import fold_batchnorm
from .modules import QuantAdd, QuantConv1d, QuantConv2d, QuantLinear
from .observers import CALIBRATORS, make_observer
from .ptq import PTQConfig, ptq
from .deploy_linear import deploy_linears, model_bytes
from .embedding import QuantEmbedding, quantize_embeddings

__all__ = ["CALIBRATORS", "PTQConfig", "QuantAdd", "QuantConv1d", "QuantConv2d", "QuantLinear", "Quantizer",
           "QuantEmbedding", "TensorSpec", "calibrate", "deploy_linears", "model_bytes", "quantize_embeddings", "fold_batchnorm", "make_observer", "ptq"]
