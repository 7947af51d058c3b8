import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdnn.errors import EffdnnError
from effdnn.prune.saliency import (channel_saliency, fisher_diagonal, group_l1, hutchinson_diagonal, input_l1,
                                    weight_saliency)


def _linear_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    return m, {"0": m[0]}


def _data(n=24, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[:n // 2], y[:n // 2]), (x[n // 2:], y[n // 2:])]


def test_magnitude_is_abs_weight():
    m, layers = _linear_model()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.0, 3.0]] * 3))
    s = weight_saliency("magnitude", m, layers)["0"]
    assert s[0].tolist() == [1.0, 2.0, 0.0, 3.0]


def test_lamp_scores_by_hand_and_its_global_cut_differs_from_magnitude():
    """LAMP (Lee et al. 2021, eq. 3): A = [1, -2, 3] -> [1/14, 4/13, 1]; B = [10, 20] -> [100/500, 1].
    Cutting 2 of the 5 weights globally, magnitude takes A's 1 and 2, LAMP A's 1 and B's 10."""
    from effdnn.prune.masks import global_masks

    m = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
        m[1].weight.copy_(torch.tensor([[10.0, 20.0]]))
    layers = {"0": m[0], "1": m[1]}
    s = weight_saliency("lamp", m, layers)
    torch.testing.assert_close(s["0"], torch.tensor([[1 / 14, 4 / 13, 1.0]]))
    torch.testing.assert_close(s["1"], torch.tensor([[0.2, 1.0]]))
    assert global_masks(s, 0.4)["1"].tolist() == [[False, True]]
    assert global_masks(weight_saliency("magnitude", m, layers), 0.4)["0"].tolist() == [[False, False, True]]


def test_taylor_is_abs_weight_times_gradient_averaged_over_batches():
    m, layers = _linear_model()
    data = _data()
    want = torch.zeros_like(m[0].weight)
    for x, y in data:  # softmax regression: dL_b/dW = mean_i (p_i - onehot_i) x_i^T, by hand
        with torch.no_grad():
            p = F.softmax(m(x), 1)
            g = ((p - F.one_hot(y, 3).float()).T @ x) / len(y)
        want += (m[0].weight.detach() * g).abs() / len(data)
    s = weight_saliency("taylor", m, layers, data)["0"]
    torch.testing.assert_close(s, want, rtol=1e-5, atol=1e-7)


def test_fisher_diagonal_matches_a_per_example_loop():
    m, layers = _linear_model()
    data = _data()
    want = torch.zeros_like(m[0].weight)
    n = 0
    for x, y in data:
        for i in range(len(y)):
            m.zero_grad()
            F.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
            want += m[0].weight.grad ** 2
            n += 1
    got = fisher_diagonal(m, layers, data)["0"]
    torch.testing.assert_close(got, want / n, rtol=1e-4, atol=1e-8)


def test_hutchinson_estimates_the_exact_hessian_diagonal():
    m, layers = _linear_model()
    data = _data()
    x = torch.cat([b[0] for b in data]); y = torch.cat([b[1] for b in data])
    w0 = m[0].weight.detach().clone()
    b0 = m[0].bias.detach()
    H = torch.autograd.functional.hessian(lambda w: F.cross_entropy(x @ w.T + b0, y), w0)  # (3,4,3,4)
    exact = torch.einsum("ijij->ij", H)
    est = hutchinson_diagonal(m, layers, data, samples=400)["0"]
    assert (est - exact).abs().max() < 0.15 * exact.abs().max()


def test_obd_is_half_h_w_squared():
    m, layers = _linear_model()
    data = _data()
    h = fisher_diagonal(m, layers, data)["0"]
    s = weight_saliency("obd", m, layers, data, hessian="fisher")["0"]
    torch.testing.assert_close(s, 0.5 * h * m[0].weight.detach() ** 2)


def test_data_saliency_without_data_is_an_error():
    m, layers = _linear_model()
    with pytest.raises(EffdnnError, match="data"):
        weight_saliency("taylor", m, layers, None)
    with pytest.raises(EffdnnError, match="labelled"):
        weight_saliency("obd", m, layers, [torch.randn(2, 4)])


def test_channel_l1_and_bn_gamma_on_hand_tensors():
    conv = nn.Conv2d(1, 3, 1, bias=False)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1, 1))
        bn.weight.copy_(torch.tensor([-0.3, 0.1, 2.0]))
    model = nn.Sequential(conv, bn)
    assert channel_saliency("l1", model, {"0": conv}, {"0": bn})["0"].tolist() == [1.0, 2.0, 0.5]
    torch.testing.assert_close(channel_saliency("bn_gamma", model, {"0": conv}, {"0": bn})["0"], torch.tensor([0.3, 0.1, 2.0]))
    with pytest.raises(EffdnnError, match="BatchNorm"):
        channel_saliency("bn_gamma", model, {"0": conv}, {"0": None})


def test_channel_taylor_matches_a_slow_reference(tiny, tiny_data):
    layers = {"conv1": tiny.conv1}
    got = channel_saliency("taylor", tiny, layers, {"conv1": tiny.bn1}, tiny_data)["conv1"]
    # reference: per example, |mean over H, W of a * dL_example/da| with a = bn1 output
    acc, n = torch.zeros(8), 0
    for x, y in tiny_data:
        for i in range(len(y)):
            store = {}
            def keep(m, inp, out):
                out.retain_grad()
                store["a"] = out

            h = tiny.bn1.register_forward_hook(keep)
            F.cross_entropy(tiny(x[i:i + 1]), y[i:i + 1]).backward()
            h.remove()
            a = store["a"]
            acc += (a * a.grad).mean((2, 3)).abs()[0].detach()
            n += 1
    torch.testing.assert_close(got, acc / n, rtol=1e-4, atol=1e-9)


def test_group_l1_by_hand_with_a_flattened_consumer():
    """Each term (filter L1, |gamma|, consumer columns L1) over its mean, summed per channel."""
    conv = nn.Conv2d(1, 3, 1, bias=False)
    bn = nn.BatchNorm2d(3)
    fc = nn.Linear(3 * 2, 1, bias=False)  # after a flatten of 3 x 1 x 2 maps: channel c owns columns 2c, 2c + 1
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).reshape(3, 1, 1, 1))  # L1 1, 2, 3: mean 2
        bn.weight.copy_(torch.tensor([0.5, -0.5, 2.0]))  # 0.5, 0.5, 2: mean 1
        fc.weight.copy_(torch.tensor([[4.0, -4.0, 0.0, 1.0, 1.0, 0.0]]))  # 8, 1, 1: mean 10 / 3
    assert input_l1(fc, spatial=2).tolist() == [8.0, 1.0, 1.0]
    want = torch.tensor([1 / 2 + 0.5 / 1 + 8 * 3 / 10, 2 / 2 + 0.5 / 1 + 1 * 3 / 10, 3 / 2 + 2 / 1 + 1 * 3 / 10])
    torch.testing.assert_close(group_l1([conv], [bn], [(fc, 2)]), want)
    conv2 = nn.Conv2d(3, 2, 3, bias=False)  # a conv consumer: L1 over (outputs, kernel) per input channel
    torch.testing.assert_close(input_l1(conv2), conv2.weight.detach().abs().sum((0, 2, 3)))
