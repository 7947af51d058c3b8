
import pytest
import torch



@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own baseline cache, so tests never reuse a user's trained models."""
    monkeypatch.setenv("EFFDNN_CACHE", str(tmp_path_factory.getbasetemp() / "effdnn-cache"))
    torch.manual_seed(0)
