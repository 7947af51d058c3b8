from typing import Literal

import pytest
from torch import nn

from effdnn.errors import EffdnnError
from effdnn.registry import Registry, StrictModel


class ScaleConfig(StrictModel):
    method: Literal["scale"] = "scale"
    factor: float = 2.0


def test_register_parse_apply_and_errors():
    reg = Registry("toy")

    @reg.register("scale", ScaleConfig)
    def scale(model, config, ctx=None):
        """Multiply every weight."""
        for p in model.parameters():
            p.data *= config.factor
        return model

    lin = nn.Linear(2, 2)
    w = lin.weight.detach().clone()
    reg.apply(lin, {"method": "scale", "factor": 3.0})
    assert (lin.weight == 3 * w).all()
    assert reg.parse(ScaleConfig(factor=1.5)).factor == 1.5  # a config object passes as is
    assert reg.methods()[0].summary == "Multiply every weight."
    with pytest.raises(EffdnnError, match=r"toy.factor: Input should be a valid number"):
        reg.parse({"method": "scale", "factor": "big"})
    with pytest.raises(EffdnnError, match=r"toy.method: unknown toy method 'shift' \(known: scale\)"):
        reg.parse({"method": "shift"})
    with pytest.raises(EffdnnError, match=r"toy.method: missing"):
        reg.parse({"factor": 2})
    with pytest.raises(TypeError):
        reg.register("bad", StrictModel)
