"""DPO-family losses against values worked out by hand (the formula applied to literal numbers)."""

import math

import pytest
import torch

from alignloop.losses import dpo_logratio, dpo_loss, hinge_loss, ipo_loss, kto_loss, robust_dpo_loss, simpo_loss

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731

# one pair: policy prefers chosen by 2 nats (-10 vs -12), the reference is indifferent (-11 vs -11): h = 2
PC, PR, RC, RR = T(-10.0), T(-12.0), T(-11.0), T(-11.0)


def test_logratio():
    assert dpo_logratio(PC, PR, RC, RR).item() == 2.0


def test_dpo_sigmoid_and_rewards():
    loss, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))  # -log σ(0.2) = 0.598138869
    assert loss.item() == pytest.approx(0.598138869, abs=1e-9)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)  # β(π - ref)


def test_dpo_at_start_is_log2():
    loss, _, _ = dpo_loss(T(-3.0, -7.0), T(-4.0, -1.0), T(-3.0, -7.0), T(-4.0, -1.0))
    assert loss.tolist() == pytest.approx([math.log(2)] * 2)


def test_conservative_dpo_label_smoothing():
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    # 0.9 * log(1+e^-0.2) + 0.1 * log(1+e^0.2) = 0.9 * 0.598138869 + 0.1 * 0.798138869
    assert loss.item() == pytest.approx(0.618138869, abs=1e-9)


def test_robust_dpo():
    loss, _, _ = robust_dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    # (0.9 * 0.598138869 - 0.1 * 0.798138869) / 0.8
    assert loss.item() == pytest.approx(0.573138869, abs=1e-9)


def test_ipo():
    loss, _, _ = ipo_loss(PC, PR, RC, RR, beta=0.1)
    assert loss.item() == pytest.approx((2 - 1 / 0.2) ** 2)  # (2 - 5)^2 = 9
    assert loss.item() == pytest.approx(9.0)


def test_hinge():
    # h = 2, -4, 20: max(0, 1 - 0.1 h) = 0.8, 1.4, 0
    loss, _, _ = hinge_loss(T(-10.0, -5.0, 0.0), T(-12.0, -1.0, -20.0), T(-11.0, -5.0, 0.0), T(-11.0, -5.0, 0.0))
    assert loss.tolist() == pytest.approx([0.8, 1.4, 0.0])


def test_simpo():
    # 2 * (-0.5) - 2 * (-1.0) - 1 = 0  ->  -log σ(0) = log 2
    loss, c, r = simpo_loss(T(-0.5), T(-1.0), beta=2.0, gamma=1.0)
    assert loss.item() == pytest.approx(math.log(2))
    assert (c.item(), r.item()) == (-1.0, -2.0)
    loss, _, _ = simpo_loss(T(-0.5), T(-2.0))  # defaults β=2, γ=1: -log σ(-1 + 4 - 1) = log(1 + e^-2)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_kto():
    # r = -10 - (-12) = 2 for both; z = 0.5
    pol, ref, lab = T(-10.0, -10.0), T(-12.0, -12.0), torch.tensor([True, False])
    loss, rew = kto_loss(pol, ref, lab, kl=T(0.5), beta=0.1)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert loss.tolist() == pytest.approx([1 - sig(0.15), 1 - sig(-0.15)])  # 0.462570155, 0.537429845
    assert loss.tolist() == pytest.approx([0.462570155, 0.537429845], abs=1e-9)
    assert rew.tolist() == pytest.approx([0.2, 0.2])
    # a negative KL estimate is clamped to 0; weights scale each side
    loss, _ = kto_loss(pol, ref, lab, kl=T(-3.0), beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)
    assert loss.tolist() == pytest.approx([2 * (1 - sig(0.2)), 0.5 * (1 - sig(-0.2))])


def test_gradients_flow_to_policy_only():
    pc, pr = T(-10.0).requires_grad_(), T(-12.0).requires_grad_()
    loss, _, _ = dpo_loss(pc, pr, RC, RR, beta=0.1)
    loss.sum().backward()
    # d/dpc -log σ(β h) = -β (1 - σ(β h)) = -0.1 * σ(-0.2)
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.2)))
    assert pr.grad.item() == pytest.approx(0.1 / (1 + math.exp(0.2)))
