"""The tri-modal loss against hand-worked values, and which terms carry gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.loss import LogitScale, TriModalLoss


def _ce(logits_row: list[float], target: int) -> float:
    return -logits_row[target] + math.log(sum(math.exp(v) for v in logits_row))


def test_symmetric_infonce_hand_worked():
    # x = [[1, 0], [0.6, 0.8]], targets the identity, scale 1: logits = x @ t.T = x.
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = torch.eye(2)
    rows = (_ce([1.0, 0.0], 0) + _ce([0.6, 0.8], 1)) / 2  # x -> t
    cols = (_ce([1.0, 0.6], 0) + _ce([0.0, 0.8], 1)) / 2  # t -> x
    expected = (rows + cols) / 2
    loss = TriModalLoss(a=0.0, b=0.0, c=1.0)
    total, parts = loss(x, t, t, torch.tensor(1.0))
    assert float(parts["loss_xc"]) == pytest.approx(expected, abs=1e-6)
    assert float(total) == pytest.approx(expected, abs=1e-6)  # b = 0: L(X,R) logged, not added
    # identity vs identity at scale s: every CE is log(1 + e^-s)
    assert float(parts["loss_cr"]) == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)


def test_weights_combine_terms():
    g = torch.Generator().manual_seed(0)
    x, c, r = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(3))
    s = torch.tensor(5.0)
    _, parts = TriModalLoss(0.0, 1.0, 1.0)(x, c, r, s)
    total, _ = TriModalLoss(0.3, 2.0, 0.5)(x, c, r, s)
    want = 0.3 * parts["loss_cr"] + 2.0 * parts["loss_xr"] + 0.5 * parts["loss_xc"]
    assert float(total) == pytest.approx(float(want), abs=1e-5)


def _grad(a: float, b: float, c: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(5, 8, generator=g), dim=-1).requires_grad_(True)
    ct, rep = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(2))
    total, _ = TriModalLoss(a, b, c)(x, ct, rep, torch.tensor(3.0))
    total.backward()
    assert x.grad is not None
    return x.grad.clone()


def test_zero_weight_removes_that_terms_gradient():
    both, only_xr, only_xc = _grad(0, 1, 1), _grad(0, 1, 0), _grad(0, 0, 1)
    assert not torch.allclose(only_xr, only_xc)
    torch.testing.assert_close(both, only_xr + only_xc)
    # the a-term (cached CT vs report) never reaches the radiograph encoder
    torch.testing.assert_close(_grad(5.0, 1, 1), both)


def test_logit_scale_frozen_or_learnable():
    frozen = LogitScale(math.log(1 / 0.07), learnable=False)
    assert float(frozen()) == pytest.approx(1 / 0.07, rel=1e-6)
    assert not list(frozen.parameters())
    learnable = LogitScale(math.log(1 / 0.07), learnable=True)
    assert len(list(learnable.parameters())) == 1
    assert float(LogitScale(10.0, learnable=True)().detach()) == pytest.approx(100.0)  # clamped as CLIP does
