"""Bad input of the transformer quantization paths: one line each (issue 20's list)."""
from __future__ import annotations

import pytest
import torch

import effdnn
from effdnn.errors import EffdnnError
from tests.quant.tiny_bert import tiny_bert


@pytest.mark.parametrize("method", ["ptq", "smoothquant", "gptq"])
def test_batch_keys_that_forward_does_not_take(method: str) -> None:
    spec = {"method": method, **({"weight": {"bits": 4}} if method == "gptq" else {})}
    with pytest.raises(EffdnnError, match=r"calibration batch keys \['ids', 'mask'\] are not arguments of BertModel.forward") as e:
        effdnn.quantize(tiny_bert(), spec, [{"ids": torch.zeros(2, 4, dtype=torch.long), "mask": torch.ones(2, 4)}])
    assert "\n" not in str(e.value) and "input_ids" in str(e.value)
