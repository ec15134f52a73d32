"""Losses of common/losses.py against small cases worked out by hand.

Every expected value is written out from the literal dot products / cosines of the tiny vectors,
never by re-running the computation in torch.
"""
import math

import pytest
import torch

from common.losses import contrastive, cosine, in_batch_accuracy, infonce, margin_mse

TOL = 1e-6


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# q0 = [1,0], q1 = [0,1]; without hard negatives d = [p0, p1] = [[1,0], [0.6,0.8]]
#   q0.p0 = 1, q0.p1 = 0.6, q1.p0 = 0, q1.p1 = 0.8
Q = [[1.0, 0.0], [0.0, 1.0]]
D1 = [[1.0, 0.0], [0.6, 0.8]]
# with one hard negative each: d = [p0, n0, p1, n1] = [[1,0], [0.6,0.8], [0,1], [0.8,0.6]]
#   q0 . d = [1, 0.6, 0, 0.8] (target row 0), q1 . d = [0, 0.8, 1, 0.6] (target row 2)
D2 = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_infonce_in_batch_negatives_by_hand(temperature):
    T = temperature
    row0 = -math.log(math.exp(1 / T) / (math.exp(1 / T) + math.exp(0.6 / T)))
    row1 = -math.log(math.exp(0.8 / T) / (math.exp(0 / T) + math.exp(0.8 / T)))
    expected = (row0 + row1) / 2
    kwargs = {} if temperature == 0.05 else {"temperature": T}  # 0.05 is the default
    assert infonce(t(Q), t(D1), **kwargs).item() == pytest.approx(expected, abs=TOL)


def test_infonce_symmetric_by_hand():
    T = 0.5
    fwd = (-math.log(math.exp(1 / T) / (math.exp(1 / T) + math.exp(0.6 / T)))
           - math.log(math.exp(0.8 / T) / (math.exp(0 / T) + math.exp(0.8 / T)))) / 2
    # passage -> query: p0 . [q0, q1] = [1, 0], p1 . [q0, q1] = [0.6, 0.8]
    bwd = (-math.log(math.exp(1 / T) / (math.exp(1 / T) + math.exp(0 / T)))
           - math.log(math.exp(0.8 / T) / (math.exp(0.6 / T) + math.exp(0.8 / T)))) / 2
    got = infonce(t(Q), t(D1), temperature=T, symmetric=True).item()
    assert got == pytest.approx((fwd + bwd) / 2, abs=TOL)
    assert got != pytest.approx(fwd, abs=1e-3)  # the backward direction does change the value


def test_infonce_hard_negatives_by_hand():
    T = 0.5
    # every query is scored against all four documents, its own positive the target
    row0 = -math.log(math.exp(1 / T) / (math.exp(1 / T) + math.exp(0.6 / T) + math.exp(0 / T) + math.exp(0.8 / T)))
    row1 = -math.log(math.exp(1 / T) / (math.exp(0 / T) + math.exp(0.8 / T) + math.exp(1 / T) + math.exp(0.6 / T)))
    assert infonce(t(Q), t(D2), temperature=T).item() == pytest.approx((row0 + row1) / 2, abs=TOL)


def test_infonce_symmetric_hard_negatives_uses_the_positives():
    T = 0.5
    fwd = (-math.log(math.exp(1 / T) / (math.exp(1 / T) + math.exp(0.6 / T) + math.exp(0 / T) + math.exp(0.8 / T)))
           - math.log(math.exp(1 / T) / (math.exp(0 / T) + math.exp(0.8 / T) + math.exp(1 / T) + math.exp(0.6 / T)))) / 2
    # passage -> query over the positives p0 = [1,0], p1 = [0,1] only (rows 0 and 2, not rows 0 and 1):
    #   p0 . [q0, q1] = [1, 0], p1 . [q0, q1] = [0, 1]
    bwd = (-math.log(math.exp(1 / T) / (math.exp(1 / T) + math.exp(0 / T)))
           - math.log(math.exp(1 / T) / (math.exp(0 / T) + math.exp(1 / T)))) / 2
    got = infonce(t(Q), t(D2), temperature=T, symmetric=True).item()
    assert got == pytest.approx((fwd + bwd) / 2, abs=TOL)


def test_margin_mse_by_hand():
    # G = 3: q0 = [1,0] against [1,0], [0.6,0.8], [0,1] -> scores [1, 0.6, 0], margins 0.4, 1
    #        q1 = [0,1] against [0,1], [0.6,0.8], [1,0] -> scores [1, 0.8, 0], margins 0.2, 1
    q = t([[1, 0], [0, 1]])
    d = t([[1, 0], [0.6, 0.8], [0, 1], [0, 1], [0.6, 0.8], [1, 0]])
    teacher = t([[5, 4, 2], [7, 6.5, 4]])  # teacher margins 1, 3 and 0.5, 3
    expected = ((0.4 - 1) ** 2 + (1 - 3) ** 2 + (0.2 - 0.5) ** 2 + (1 - 3) ** 2) / 4
    assert margin_mse(q, d, teacher).item() == pytest.approx(expected, abs=TOL)
    # at temperature 0.5 the student's margins double: 0.8, 2 and 0.4, 2
    expected = ((0.8 - 1) ** 2 + (2 - 3) ** 2 + (0.4 - 0.5) ** 2 + (2 - 3) ** 2) / 4
    assert margin_mse(q, d, teacher, temperature=0.5).item() == pytest.approx(expected, abs=TOL)


def test_margin_mse_zero_when_margins_match():
    # student scores q0: [1, 0.6], q1: [1, 0.6] (margins 0.4); teacher scores shifted but same margins
    teacher = t([[11, 10.6], [-3, -3.4]])
    assert margin_mse(t(Q), t(D2), teacher).item() == pytest.approx(0.0, abs=TOL)


def test_margin_mse_requires_hard_negatives():
    with pytest.raises(ValueError):
        margin_mse(t(Q), t(D1), t([[1.0], [1.0]]))


def test_contrastive_hard_negatives_by_hand():
    # non-unit vectors: the loss works on the cosine, not the dot product
    # q0 = [2,0]: p0 = [3,4] cos 0.6 dist 0.4; n0 = [4,3] cos 0.8 dist 0.2 -> relu(0.5 - 0.2) = 0.3
    # q1 = [0,3]: p1 = [0,5] cos 1 dist 0;     n1 = [0.3,0.4] cos 0.8 dist 0.2 -> 0.3
    q = t([[2, 0], [0, 3]])
    d = t([[3, 4], [4, 3], [0, 5], [0.3, 0.4]])
    expected = 0.5 * (0.4 ** 2 + 0.3 ** 2 + 0 ** 2 + 0.3 ** 2) / 4
    assert contrastive(q, d).item() == pytest.approx(expected, abs=TOL)
    # margin 0.1: both negatives (dist 0.2) are already beyond it
    assert contrastive(q, d, margin=0.1).item() == pytest.approx(0.5 * (0.4 ** 2 + 0 ** 2) / 4, abs=TOL)


def test_contrastive_without_hard_negatives_uses_next_positive():
    # d = [p0, p1, p2] = [[0.6,0.8], [0.8,0.6], [1,0]]; q_i's negative is p_{i+1}, q2's wraps round to p0
    # q0 = [1,0]: pos p0 cos 0.6 dist 0.4; neg p1 cos 0.8 dist 0.2 -> relu(0.5 - 0.2) = 0.3
    # q1 = [0,1]: pos p1 cos 0.6 dist 0.4; neg p2 cos 0   dist 1   -> 0
    # q2 = [1,0]: pos p2 cos 1   dist 0;   neg p0 cos 0.6 dist 0.4 -> 0.1
    q = t([[1, 0], [0, 1], [1, 0]])
    d = t([[0.6, 0.8], [0.8, 0.6], [1, 0]])
    expected = 0.5 * (0.4 ** 2 + 0.3 ** 2 + 0.4 ** 2 + 0 ** 2 + 0 ** 2 + 0.1 ** 2) / 6
    assert contrastive(q, d).item() == pytest.approx(expected, abs=TOL)


def test_contrastive_zero_when_positives_match_and_negatives_far():
    # hard negatives opposite the query: distance 2 > margin
    d = t([[1, 0], [-1, 0], [0, 1], [0, -1]])
    assert contrastive(t(Q), d).item() == pytest.approx(0.0, abs=TOL)
    # without hard negatives: the other (orthogonal) query's positive is at distance 1 > 0.5
    assert contrastive(t(Q), t(Q)).item() == pytest.approx(0.0, abs=TOL)


def test_cosine_default_and_explicit_targets():
    # q0 = [2,0]: p0 = [3,4] cos 0.6, n0 = [4,3] cos 0.8; q1 = [0,3]: p1 = [0,5] cos 1, n1 = [0.3,0.4] cos 0.8
    q = t([[2, 0], [0, 3]])
    d = t([[3, 4], [4, 3], [0, 5], [0.3, 0.4]])
    default = ((0.6 - 1) ** 2 + (0.8 - 0) ** 2 + (1 - 1) ** 2 + (0.8 - 0) ** 2) / 4
    assert cosine(q, d).item() == pytest.approx(default, abs=TOL)
    targets = t([[0.9, 0.1], [0.7, 0.2]])
    explicit = ((0.6 - 0.9) ** 2 + (0.8 - 0.1) ** 2 + (1 - 0.7) ** 2 + (0.8 - 0.2) ** 2) / 4
    assert cosine(q, d, targets).item() == pytest.approx(explicit, abs=TOL)


def test_in_batch_accuracy_by_hand():
    # G = 1: q0 . d = [1, 0.8, 0] -> row 0 right; q1 . d = [0, 0.6, 1] -> row 2, wrong;
    #        q2 = [0.6,0.8] . d = [0.6, 0.96, 0.8] -> row 1, wrong
    q = t([[1, 0], [0, 1], [0.6, 0.8]])
    d = t([[1, 0], [0.8, 0.6], [0, 1]])
    assert in_batch_accuracy(q, d).item() == pytest.approx(1 / 3, abs=TOL)
    # G = 2: q0 . d = [1, 0.6, 0.6, 0] -> row 0 right; q1 . d = [0, 0.8, 0.8, 1] -> row 3 (a hard negative), wrong
    d2 = t([[1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]])
    assert in_batch_accuracy(t(Q), d2).item() == pytest.approx(0.5, abs=TOL)


def test_groups_must_divide():
    with pytest.raises(ValueError):
        infonce(t(Q), t([[1, 0], [0, 1], [1, 1]]))


@pytest.mark.parametrize("name", ["infonce", "infonce_symmetric", "margin_mse", "contrastive", "cosine"])
def test_gradients_flow_to_queries(name):
    q = t([[1, 0.2], [0.1, 1]]).requires_grad_()
    d = t(D2)
    loss = {
        "infonce": lambda: infonce(q, d, temperature=0.5),
        "infonce_symmetric": lambda: infonce(q, d, temperature=0.5, symmetric=True),
        "margin_mse": lambda: margin_mse(q, d, t([[3, 1], [2, 1.5]])),
        "contrastive": lambda: contrastive(q, d),
        "cosine": lambda: cosine(q, d),
    }[name]()
    assert loss.item() > 0
    loss.backward()
    assert q.grad is not None
    assert torch.isfinite(q.grad).all()
    assert q.grad.abs().sum().item() > 0
