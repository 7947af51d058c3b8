"""Model zoo by name (``mlp``, ``lenet5``, ``resnet``, ``vgg-small``, ``mobilenetv2``) or a user's ``"file.py:fn"``.

Every builder takes ``(in_channels, num_classes, input_size, **kwargs)``; a user function gets the
same three as keyword arguments plus the recipe's ``kwargs``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import EffdnnError
from ..utils.user_code import call_user, is_user_ref, load_user_function
from .layers import Add
from .lenet5 import LeNet5, lenet5
from .mlp import mlp
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .resnet import ResNetCifar, resnet
from .vgg import vgg_small

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet5": lenet5,
    "resnet": resnet,
    "resnet20": lambda *a, **kw: resnet(*a, **{"depth": 20, **kw}),
    "resnet32": lambda *a, **kw: resnet(*a, **{"depth": 32, **kw}),
    "vgg-small": vgg_small,
    "mobilenetv2": mobilenetv2,
}


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    base_dir: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a zoo model or call a user's ``"file.py:function"``; bad names or options give one line."""
    if is_user_ref(name):
        fn = load_user_function(name, base_dir)
        model = call_user(name, fn, in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs)
        if not isinstance(model, nn.Module):
            raise EffdnnError(f"{name}: must return a torch.nn.Module, got {type(model).__name__}")
        return model
    if name not in MODELS:
        raise EffdnnError(f"model.name: unknown model {name!r} (known: {', '.join(MODELS)}, or 'file.py:function')")
    try:
        return MODELS[name](in_channels, num_classes, input_size, **kwargs)
    except (TypeError, ValueError) as e:
        raise EffdnnError(f"model.kwargs: bad option for {name!r}: {e}") from None


__all__ = ["Add", "LeNet5", "MODELS", "MobileNetV2", "ResNetCifar", "build_model", "lenet5", "mlp", "mobilenetv2", "resnet", "vgg_small"]
