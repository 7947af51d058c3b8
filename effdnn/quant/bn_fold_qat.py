"""BatchNorm folded into the preceding layer *during* QAT, with statistics frozen after an epoch.

Jacob et al. 2018, section 3.2 and Krishnamoorthi 2018, section 3.2 (figure 8): the layer is trained
as the layer it will be deployed as, i.e. with BN folded into its weight before quantization,

    w_fold = w * gamma / sigma          y = conv(x, Q(w_fold)) + (b - mu) * gamma / sigma + beta

where (mu, sigma) are the batch statistics of conv(x, w) + b while BN still learns, and the running
statistics once frozen (``freeze()``, called from ``on_epoch_start`` of the freeze epoch) and in eval
mode. Batch statistics are summed over DDP ranks (like SyncBatchNorm), so every rank folds with the
same numbers; they are computed without gradient (the running statistics replace them at the freeze).

``FoldedBNWeight`` replaces the layer's ``weight_quant`` (it wraps the real quantizer) and owns the BN
module; two hooks on the layer gather the batch statistics and add the folded bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fold_bn import fold_pair
from ..utils.distributed import all_reduce_


def _channel_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, *([1] * (like.dim() - 2)))  # (1, C, 1, ...)


class FoldedBNWeight(nn.Module):
    def __init__(self, inner: nn.Module, bn: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.inner, self.bn, self.frozen = inner, bn, False
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hooks = [layer.register_forward_pre_hook(self._stats_hook), layer.register_forward_hook(self._bias_hook)]

    @property
    def fmt(self):  # the cost model and summaries read the wrapped quantizer's format
        return self.inner.fmt

    def storage_bits(self, numel: int) -> int:
        return self.inner.storage_bits(numel)

    def _use_batch(self) -> bool:
        return self.training and not self.frozen and torch.is_grad_enabled()

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._use_batch() and self._batch is not None:
            return self._batch
        return self.bn.running_mean, self.bn.running_var

    def _stats_hook(self, layer: nn.Module, args: tuple) -> None:
        if self._use_batch():
            with torch.no_grad():
                self._batch_stats(layer, args[0])

    def _batch_stats(self, layer: nn.Module, x: torch.Tensor) -> None:
        y = F.linear(x, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer._conv_forward(x, layer.weight, layer.bias)
        dims = [d for d in range(y.dim()) if d != 1]
        s = torch.stack([y.sum(dims), (y * y).sum(dims)])  # (2, C)
        n = torch.tensor([float(y.numel() // y.shape[1])], device=y.device)
        all_reduce_(s, "sum"), all_reduce_(n, "sum")
        mean = s[0] / n
        var = (s[1] / n - mean * mean).clamp_min(0)
        m = self.bn.momentum if self.bn.momentum is not None else 0.1
        self.bn.running_mean.lerp_(mean, m)
        self.bn.running_var.lerp_(var * n / (n - 1).clamp_min(1), m)  # unbiased, as BatchNorm
        self.bn.num_batches_tracked += 1
        self._batch = (mean, var)

    def _factor(self) -> torch.Tensor:
        _, var = self._stats()
        gamma = self.bn.weight if self.bn.weight is not None else torch.ones_like(var)
        return gamma / torch.sqrt(var + self.bn.eps)  # (C,)

    def _bias_hook(self, layer: nn.Module, args: tuple, y: torch.Tensor) -> torch.Tensor:
        mean, _ = self._stats()
        b = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        beta = self.bn.bias if self.bn.bias is not None else torch.zeros_like(mean)
        return y + _channel_view((b - mean) * self._factor() + beta - b, y)

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # (out, ...)
        return self.inner(w * self._factor().reshape(-1, *([1] * (w.dim() - 1))))

    def freeze(self) -> None:
        self.frozen = True

    def unfold(self, layer: nn.Module) -> nn.Module:
        """Fold the (running) statistics into the layer for good; returns the wrapped quantizer."""
        for h in self._hooks:
            h.remove()
        fold_pair(layer, self.bn)
        return self.inner
