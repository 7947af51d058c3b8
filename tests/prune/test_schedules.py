import pytest

from effdnn.prune.schedules import Plan, agp_sparsity, iterative_sparsity


def test_agp_cubic_values():
    # Zhu & Gupta 2017 eq. 1 with s_i = 0, s_f = 0.9, t0 = 0, n = 10, dt = 1
    assert agp_sparsity(0, 0.9) == 0.0
    assert agp_sparsity(1, 0.9) == pytest.approx(0.9 * (1 - 0.9 ** 3))
    assert agp_sparsity(5, 0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))  # 0.7875
    assert agp_sparsity(10, 0.9) == pytest.approx(0.9)
    assert agp_sparsity(500, 0.9) == pytest.approx(0.9)


def test_agp_holds_between_events_and_starts_late():
    assert agp_sparsity(19, 0.8, start=10, n=4, dt=5) == agp_sparsity(15, 0.8, start=10, n=4, dt=5)
    assert agp_sparsity(9, 0.8, start=10, n=4, dt=5) == 0.0
    assert agp_sparsity(15, 0.8, start=10, n=4, dt=5) == pytest.approx(0.8 * (1 - 0.75 ** 3))


def test_agp_plan_reaches_final_by_end():
    p = Plan("agp", 0.95, total_steps=100, begin=0.0, end=0.5, steps=10)
    vals = [p.at(t) for t in range(101)]
    assert vals[0] == 0.0 and vals[50] == pytest.approx(0.95) and vals[100] == pytest.approx(0.95)
    assert all(a <= b for a, b in zip(vals, vals[1:]))  # monotone
    short = Plan("agp", 0.9, total_steps=3, end=0.75, steps=10)  # fewer steps than events
    assert short.at(3) == pytest.approx(0.9)


def test_iterative_rounds():
    assert iterative_sparsity(1, 0.875, 3) == pytest.approx(0.5)  # each round keeps half of what is left
    assert iterative_sparsity(2, 0.875, 3) == pytest.approx(0.75)
    assert iterative_sparsity(3, 0.875, 3) == pytest.approx(0.875)
    p = Plan("iterative", 0.875, total_steps=90, end=0.9, steps=3)  # rounds start at 0, 27, 54
    assert [p.at(t) for t in (0, 26, 27, 53, 54, 89)] == pytest.approx([0.5, 0.5, 0.75, 0.75, 0.875, 0.875])


def test_oneshot():
    assert Plan("oneshot", 0.7, total_steps=10).at(0) == 0.7
