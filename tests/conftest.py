# torchvision 0.28 (the optional ``zoo`` extra) links the CUDA build of torch; with the CPU build its
# import fails registering fake kernels for its detection ops. The shim skips those registrations when
# a test imports torchvision (tests/torchvision_shim.py; benchmarks use it too). Installed first thing,
# before anything can import torchvision.
from tests.torchvision_shim import install as _install_torchvision_shim

_install_torchvision_shim()

import os

import pytest
import torch
from hypothesis import settings

# CI runs the property tests with a fixed seed sequence, so a submission's result is reproducible;
# locally they keep exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")



@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own baseline cache, so tests never reuse a user's trained models."""
    monkeypatch.setenv("EFFDNN_CACHE", str(tmp_path_factory.getbasetemp() / "effdnn-cache"))
    torch.manual_seed(0)
