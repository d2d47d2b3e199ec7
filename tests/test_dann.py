"""Hand-computed checks of the DANN building blocks (no PPO involved)."""

import math
import pickle

import pytest
import torch as th
from torch import nn

from rlsim2real.dann import (
    DomainDiscriminator,
    GradientReversal,
    coral_loss,
    dann_loss,
    discriminator_accuracy,
    grad_reverse,
    make_schedule,
    mmd_loss,
)

th.set_num_threads(1)


@pytest.mark.parametrize("lambda_", [0.0, 0.3, 1.0, 2.5])
def test_grad_reverse_is_minus_lambda_times_identity_gradient(lambda_):
    x = th.randn(4, 3, requires_grad=True)
    upstream = th.randn(4, 3)
    y = grad_reverse(x, lambda_)
    assert th.equal(y, x)
    y.backward(upstream)
    assert th.equal(x.grad, -lambda_ * upstream)


def test_gradient_reversal_module_uses_settable_lambda():
    layer = GradientReversal(1.0)
    layer.lambda_ = 0.25
    x = th.ones(5, requires_grad=True)
    (3.0 * layer(x)).sum().backward()
    assert th.equal(x.grad, th.full((5,), -0.75))


def test_discriminator_reverses_gradient_to_features_only():
    th.manual_seed(0)
    disc = DomainDiscriminator(6, hidden_sizes=(8,), lambda_=1.0)
    feats = th.randn(10, 6, requires_grad=True)
    logits = disc(feats)
    assert logits.shape == (10,)
    logits.sum().backward()
    reversed_grad = feats.grad.clone()
    weight_grad = disc.net[0].weight.grad.clone()
    feats.grad = None
    disc.zero_grad()
    disc.net(feats).sum().backward()  # same MLP without the reversal layer
    assert th.allclose(reversed_grad, -feats.grad)
    assert th.allclose(weight_grad, disc.net[0].weight.grad)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in disc.modules())


def test_schedules_at_hand_computed_points():
    ganin = make_schedule("ganin", gamma=10.0)
    assert ganin(0.0) == 0.0
    assert ganin(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.98661...
    assert ganin(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    linear = make_schedule("linear", warmup=0.2, max_value=2.0)
    assert linear(0.0) == 0.0 and linear(0.1) == pytest.approx(1.0) and linear(0.7) == 2.0
    assert make_schedule("constant", value=0.3)(0.9) == 0.3
    assert pickle.loads(pickle.dumps(ganin))(0.5) == ganin(0.5)
    with pytest.raises(ValueError, match="unknown lambda schedule"):
        make_schedule("cosine")
    with pytest.raises(ValueError):
        make_schedule("ganin", slope=3)


def test_mmd_zero_for_same_sample_and_grows_with_shift():
    th.manual_seed(0)
    x = th.randn(64, 3)
    assert mmd_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    values = [mmd_loss(x, th.randn(64, 3) + shift).item() for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_coral_hand_computed():
    x = th.tensor([[0.0, 0.0], [2.0, 0.0]])  # C_s = [[2, 0], [0, 0]]
    y = th.tensor([[0.0, 0.0], [0.0, 2.0]])  # C_t = [[0, 0], [0, 2]]
    # ||C_s - C_t||_F^2 = 8; / (4 * d^2) = 8 / 16
    assert coral_loss(x, y).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        coral_loss(x[:1], y)


def test_dann_loss_ignores_masked_source_entries():
    source = th.tensor([0.0, 0.0, 50.0, -50.0])
    mask = th.tensor([True, True, False, False])
    target = th.tensor([0.0, 0.0])
    assert dann_loss(source, target, mask).item() == pytest.approx(math.log(2))
    assert dann_loss(source[:2], target).item() == pytest.approx(dann_loss(source, target, mask).item())
    balanced, acc_s, acc_t = discriminator_accuracy(th.tensor([-1.0, 1.0, 9.0]), th.tensor([2.0, 3.0]), th.tensor([1, 1, 0]))
    assert (acc_s, acc_t, balanced) == (0.5, 1.0, 0.75)
    with pytest.raises(ValueError):
        dann_loss(source, target, th.zeros(4, dtype=th.bool))


def _train_two_domains(lambda_: float, steps: int = 600, window: int = 200) -> float:
    """Encoder + task head on labelled source, discriminator on source vs shifted target."""
    gen = th.Generator().manual_seed(0)
    th.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8))
    head = nn.Linear(8, 1)
    disc = DomainDiscriminator(8, hidden_sizes=(32,), lambda_=lambda_)
    opt = th.optim.Adam([*encoder.parameters(), *head.parameters(), *disc.parameters()], lr=3e-3)
    shift = th.tensor([0.0, 0.0, 3.0, -3.0])  # the domains differ only in task-irrelevant inputs

    def batch(n=128):
        xs = th.randn(n, 4, generator=gen)
        return xs, (xs[:, 0] - xs[:, 1]).unsqueeze(1), th.randn(n, 4, generator=gen) + shift

    accuracies = []
    for _ in range(steps):
        xs, ys, xt = batch()
        fs, ft = encoder(xs), encoder(xt)
        logits_s, logits_t = disc(fs), disc(ft)
        loss = nn.functional.mse_loss(head(fs), ys) + dann_loss(logits_s, logits_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        accuracies.append(discriminator_accuracy(logits_s, logits_t)[0])
    # The adversarial game oscillates around chance; average its tail.
    return sum(accuracies[-window:]) / window


def test_gradient_reversal_confuses_discriminator_on_synthetic_shift():
    assert _train_two_domains(lambda_=0.0) > 0.95
    assert abs(_train_two_domains(lambda_=1.0) - 0.5) < 0.15
