import pytest

from effdnn.formats import float_bits


@pytest.fixture(autouse=True)
def _eager_kernels():
    """Unit tests use small tensors: the eager rounding kernels (no compile time)."""
    float_bits.set_compile(False)
    yield
    float_bits.set_compile(True)
