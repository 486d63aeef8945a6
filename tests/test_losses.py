"""InfoNCE and CoT NLL against hand computations in numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tteflash.losses import cot_nll, info_nce


def _unit(rows):
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


Q = _unit([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0]])
# columns: 0..2 in-batch targets (not on the diagonal), 3 a hard negative, 4 a copy of query 0's target
D = _unit([[0.2, 1.0, 0.1], [0.0, 0.3, 1.0], [1.0, 0.1, 0.2], [0.9, 0.5, 0.0], [0.2, 1.0, 0.1]])
POS = [0, 2, 1]
KEYS = ["a", "b", "c", "hard", "a"]
T = 0.5


def _logsumexp(x):
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def _hand_info_nce(q, d, pos, t, excluded=()):
    logits = q @ d.T / t
    losses = []
    for i, p in enumerate(pos):
        cols = [j for j in range(d.shape[0]) if (i, j) not in excluded]
        losses.append(-(logits[i, p] - _logsumexp(logits[i, cols])))
    return float(np.mean(losses)), logits


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


def test_info_nce_in_batch_and_hard_negatives():
    expected, _ = _hand_info_nce(Q, D, POS, T)
    got = info_nce(_t(Q), _t(D), torch.tensor(POS), T)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    # the hard-negative columns matter: dropping them changes the loss
    fewer, _ = _hand_info_nce(Q, D[:3], POS, T)
    assert abs(fewer - expected) > 1e-2
    assert info_nce(_t(Q), _t(D[:3]), torch.tensor(POS), T).item() == pytest.approx(fewer, abs=1e-5)


def test_info_nce_deduplicates_targets():
    # column 4 equals query 0's target (key "a"): not a negative for query 0, still one for the others
    expected, _ = _hand_info_nce(Q, D, POS, T, excluded={(0, 4)})
    got = info_nce(_t(Q), _t(D), torch.tensor(POS), T, doc_keys=KEYS)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    plain, _ = _hand_info_nce(Q, D, POS, T)
    assert abs(plain - expected) > 1e-2  # the duplicate really was in the denominator without keys
    # a query whose positive is the *second* copy excludes the first copy instead
    pos = [4, 2, 1]
    expected2, _ = _hand_info_nce(Q, D, pos, T, excluded={(0, 0)})
    got2 = info_nce(_t(Q), _t(D), torch.tensor(pos), T, doc_keys=KEYS)
    assert got2.item() == pytest.approx(expected2, abs=1e-5)


def test_info_nce_symmetric():
    forward, logits = _hand_info_nce(Q, D, POS, T)
    # document -> query over the positive columns: column POS[i] should pick query i
    backward = np.mean([-(logits[i, p] - _logsumexp(logits[:, p])) for i, p in enumerate(POS)])
    got = info_nce(_t(Q), _t(D), torch.tensor(POS), T, symmetric=True)
    assert got.item() == pytest.approx(0.5 * (forward + backward), abs=1e-5)


def test_info_nce_temperature_and_gradient():
    q = _t(Q).requires_grad_(True)
    loss = info_nce(q, _t(D), torch.tensor(POS), 0.05)
    expected, _ = _hand_info_nce(Q, D, POS, 0.05)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # analytic gradient of mean_i CE: (softmax_i - onehot_i) @ D / (t * B)
    logits = Q @ D.T / 0.05
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(3), POS] -= 1
    np.testing.assert_allclose(q.grad.numpy(), p @ D / (0.05 * 3), atol=1e-4)


def test_cot_nll_hand_computed():
    logits = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-3.0, 4.0, 1.0, 0.0]])
    labels = [0, 3, 2]
    expected = np.mean([-(logits[i, y] - _logsumexp(logits[i])) for i, y in enumerate(labels)])
    got = cot_nll(torch.tensor(logits, dtype=torch.float16), torch.tensor(labels))  # upcast inside
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, abs=2e-3)
    got32 = cot_nll(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))
    assert got32.item() == pytest.approx(expected, abs=1e-6)


def test_model_cot_token_loss_matches_hand_nll(model8):
    """Output.cot_token_loss is the NLL of each CoT label under lm_head at its predicting position."""
    rows = [model8.query_row("count the red circles", cot="three red", train_cot=True),
            model8.query_row("a blue square", cot="one blue square here", train_cot=True)]
    batch = model8.make_batch(rows)
    with torch.no_grad():
        out = model8(batch)
        h = model8.vlm.model(**batch.model_inputs(), use_cache=False).last_hidden_state
        logits = model8.vlm.lm_head(h).double().numpy()
    hand = [-(logits[b, p, y] - _logsumexp(logits[b, p]))
            for (b, p), y in zip(batch.cot_predict.tolist(), batch.cot_labels.tolist())]
    assert len(hand) == sum(len(r.branch_cot) for r in rows)
    np.testing.assert_allclose(out.cot_token_loss.numpy(), hand, atol=1e-4)
    assert out.cot_loss.item() == pytest.approx(float(np.mean(hand)), abs=1e-4)
