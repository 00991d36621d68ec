"""Tests for models.metrics: set scores, Tug-of-War, the loss MIA and RMIA."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from models.metrics import (
    MiaResult,
    SetScores,
    accuracy,
    batch_score_fraction,
    loss_mia,
    macro_map,
    per_sample_loss,
    rmia,
    rmia_scores,
    task_score,
    tug_of_war,
)
from models.metrics import mia as mia_module
from models.metrics.mia import LOSS_MIA_GRID, RMIA_A, RMIA_GAMMAS, tpr_at_fpr

# ---------------------------------------------------------------- scores


def test_macro_map_perfect_ranking_is_100() -> None:
    targets = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6], [0.1, 0.3]])
    assert macro_map(scores, targets) == pytest.approx(100.0)


def test_macro_map_two_samples_hand_computed() -> None:
    # the only positive ranks second behind a negative: precision 1/2 at its recall step.
    assert macro_map(torch.tensor([[0.8], [0.3]]), torch.tensor([[0], [1]])) == pytest.approx(50.0)


def test_macro_map_hand_computed_macro_average() -> None:
    # column 0: positives ranked 1st and 3rd → AP = (1/1 + 2/3)/2 = 5/6.
    # column 1: the positive ranked 2nd → AP = 1/2. Macro = (5/6 + 1/2)/2 = 2/3.
    scores = torch.tensor([[0.9, 0.2], [0.5, 0.8], [0.1, 0.3]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 1]])
    assert macro_map(scores, targets) == pytest.approx(200.0 / 3.0)


def test_macro_map_ignores_attribute_without_positives() -> None:
    scores = torch.tensor([[0.9, 0.2, 0.7], [0.5, 0.8, 0.1], [0.1, 0.3, 0.4]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the no-positive warning must not leak out
        value = macro_map(scores, targets)
    # counting the empty column as AP 0 (torchmetrics 1.9's own macro) would give 44.4.
    assert value == pytest.approx(200.0 / 3.0)


def test_macro_map_all_attributes_without_positives_is_nan() -> None:
    assert math.isnan(macro_map(torch.rand(4, 3), torch.zeros(4, 3, dtype=torch.long)))


def test_macro_map_logits_equal_probabilities() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=generator) * 3
    targets = (torch.rand(50, 6, generator=generator) < 0.4).long()
    assert macro_map(logits, targets) == pytest.approx(macro_map(torch.sigmoid(logits), targets))


def test_macro_map_large_float32_logits_keep_their_order() -> None:
    # sigmoid(20) and sigmoid(30) are both 1.0 in float32; a tie there would give AP 0.5.
    logits = torch.tensor([[20.0], [30.0]], dtype=torch.float32)
    assert macro_map(logits, torch.tensor([[0], [1]])) == pytest.approx(100.0)


def _sklearn_macro_map(scores: np.ndarray, targets: np.ndarray) -> float:
    columns = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    return 100.0 * float(
        np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in columns])
    )


@pytest.mark.parametrize("with_ties", [False, True])
def test_macro_map_matches_sklearn(with_ties: bool) -> None:
    rng = np.random.default_rng(1 if with_ties else 2)
    scores = rng.random((200, 12))
    if with_ties:
        scores = np.round(scores, 1)
    targets = (rng.random((200, 12)) < 0.3).astype(np.int64)
    targets[:, 5] = 0  # one column without positives
    expected = _sklearn_macro_map(scores, targets)
    assert macro_map(torch.from_numpy(scores), torch.from_numpy(targets)) == pytest.approx(
        expected,
        abs=1e-4,  # torchmetrics accumulates its curve in float32
    )


def test_accuracy_hand_computed() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 0, 0])) == pytest.approx(200.0 / 3.0)


def test_accuracy_matches_sklearn() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(300, 8, generator=generator)
    targets = torch.randint(0, 8, (300,), generator=generator)
    expected = 100.0 * accuracy_score(targets.numpy(), logits.argmax(1).numpy())
    assert accuracy(logits, targets) == pytest.approx(expected)


def test_task_score_dispatches_on_kind() -> None:
    logits = torch.tensor([[0.9, 0.2], [0.1, 0.8]])
    assert task_score("multiclass", logits, torch.tensor([1, 1])) == pytest.approx(50.0)
    assert task_score("multilabel", logits, torch.tensor([[0, 1], [1, 0]])) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="unknown task kind"):
        task_score("regression", logits, torch.tensor([1, 1]))


def test_per_sample_loss_multilabel_matches_formula() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(7, 5, generator=generator) < 0.5).long()
    losses = per_sample_loss("multilabel", logits, targets)
    p = torch.sigmoid(logits.detach())
    y = targets.double()
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean(dim=1)
    assert losses.shape == (7,)
    torch.testing.assert_close(losses.detach(), expected)
    losses.sum().backward()  # stays differentiable: MetaUnlearn trains through it
    assert logits.grad is not None


def test_per_sample_loss_multiclass_matches_formula() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(9, 8, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 8, (9,), generator=generator)
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(9), targets]
    torch.testing.assert_close(per_sample_loss("multiclass", logits, targets), expected)
    reference = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(per_sample_loss("multiclass", logits, targets), reference)


def test_per_sample_loss_upcasts_bfloat16() -> None:
    logits = torch.randn(4, 3).to(torch.bfloat16)
    losses = per_sample_loss("multilabel", logits, torch.ones(4, 3))
    assert losses.dtype == torch.float32


def test_batch_score_fraction_multilabel_and_undefined() -> None:
    logits = torch.tensor([[2.0, -1.0], [-2.0, 1.0], [0.5, 0.0]], requires_grad=True)
    targets = torch.tensor([[1, 0], [0, 1], [0, 0]])
    value = batch_score_fraction("multilabel", logits, targets)
    assert not value.requires_grad
    assert float(value) == pytest.approx(1.0)
    no_positives = batch_score_fraction("multilabel", logits, torch.zeros(3, 2))
    assert float(no_positives) == 0.0


def test_batch_score_fraction_multiclass() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    value = batch_score_fraction("multiclass", logits, torch.tensor([0, 0, 0, 1]))
    assert not value.requires_grad
    assert float(value) == pytest.approx(0.75)


# ---------------------------------------------------------------- Tug-of-War


def test_tow_identity_is_100() -> None:
    scores = SetScores(retain=87.5, forget=42.0, test=80.0)
    assert tug_of_war(scores, scores) == pytest.approx(100.0)


def test_tow_hand_computed() -> None:
    unlearned = SetScores(retain=90.0, forget=40.0, test=80.0)
    retrained = SetScores(retain=95.0, forget=30.0, test=80.0)
    assert tug_of_war(unlearned, retrained) == pytest.approx(100.0 * 0.95 * 0.90 * 1.0)
    assert tug_of_war(retrained, unlearned) == pytest.approx(85.5)


# ---------------------------------------------------------------- loss MIA


def test_loss_mia_separable_losses() -> None:
    rng = np.random.default_rng(6)
    result = loss_mia(
        rng.uniform(0.0, 0.1, 300),
        rng.uniform(1.0, 2.0, 300),
        rng.uniform(0.0, 0.1, 100),
        rng.uniform(1.0, 2.0, 100),
    )
    assert result.auc > 99.0
    assert result.acc < 1.0


def test_loss_mia_identical_distributions_is_chance() -> None:
    rng = np.random.default_rng(7)
    losses = rng.normal(1.0, 0.2, (4, 1500))
    result = loss_mia(*losses)
    assert abs(result.auc - 50.0) < 6.0


def test_loss_mia_matches_independent_forest_and_selection() -> None:
    rng = np.random.default_rng(8)
    retain = rng.gamma(2.0, 0.2, 400)
    val = rng.gamma(2.0, 0.4, 300)
    forget = rng.gamma(2.0, 0.3, 80)
    test = rng.gamma(2.0, 0.4, 120)
    result = loss_mia(torch.from_numpy(retain), val, torch.from_numpy(forget).float(), test)

    train_x = np.concatenate([retain, val])[:, None]
    train_y = np.r_[np.ones(retain.size), np.zeros(val.size)]
    attack_x = np.concatenate([forget.astype(np.float32).astype(np.float64), test])[:, None]
    attack_y = np.r_[np.ones(forget.size), np.zeros(test.size)]
    accs = []
    for n_estimators, criterion in LOSS_MIA_GRID:
        forest = RandomForestClassifier(
            n_estimators=n_estimators, criterion=criterion, random_state=0
        ).fit(train_x, train_y)
        accs.append(100.0 * float(np.mean(forest.predict(attack_x[: forget.size]) == 0)))
    chosen = int(np.argmax(accs))  # first maximum
    assert (result.n_estimators, result.criterion) == LOSS_MIA_GRID[chosen]
    assert result.acc == pytest.approx(accs[chosen])

    forest = RandomForestClassifier(
        n_estimators=result.n_estimators, criterion=result.criterion, random_state=0
    ).fit(train_x, train_y)
    expected_auc = 100.0 * roc_auc_score(attack_y, forest.predict_proba(attack_x)[:, 1])
    assert result.auc == pytest.approx(expected_auc)
    assert isinstance(result, MiaResult)


def test_loss_mia_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError):
        loss_mia(np.array([]), np.ones(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError):
        loss_mia(np.ones(3), np.array([1.0, np.nan]), np.ones(3), np.ones(3))


# ---------------------------------------------------------------- RMIA


def test_rmia_scores_hand_computed() -> None:
    # a = 0.2: denominator(s_R) = 0.6·s_R + 0.4.
    # x: s_T = 1, s_R = 2  → r(x) = (1/2)/1.6 = 0.3125.
    # z: s_R = 1, s_T = 0.1 → r(z) = 10/1.0 = 10.  LR = 3.125: > 1 and > 2, not > 4 or > 8.
    scores = rmia_scores([[1.0]], [[2.0]], [[0.1]], [[1.0]], a=0.2)
    np.testing.assert_allclose(scores[:, 0], [-1.0, -1.0, 0.0, 0.0])


def test_rmia_scores_gamma_is_strict_and_mean_over_population() -> None:
    # a = 1: r(x) = s_T/s_R², r(z) = (s_R/s_T)/s_R = 1/s_T.  r(x) = 1; r(z) = 2 and 0.25.
    scores = rmia_scores([1.0], [1.0], [0.5, 4.0], [1.0, 1.0], a=1.0, gammas=(1.0, 2.0))
    np.testing.assert_allclose(scores[:, 0], [-0.5, 0.0])


def test_rmia_majority_vote_strict_with_ties() -> None:
    # a = 1, s_R = 1: r(x) = 1 and r(z) = 1/s_T, so s_T(z) = 0.25 votes yes (LR 4 > 1), 4 votes no.
    yes, no = 0.25, 4.0
    two_way_tie = rmia_scores([[1.0], [1.0]], [[1.0], [1.0]], [[yes], [no]], [[1.0], [1.0]], 1.0)
    assert float(two_way_tie[0, 0]) == 0.0
    two_of_three = rmia_scores(
        [[1.0]] * 3, [[1.0]] * 3, [[yes], [no], [yes]], [[1.0]] * 3, 1.0, gammas=(1.0,)
    )
    assert float(two_of_three[0, 0]) == -1.0


def _naive_scores(
    t_x: np.ndarray, r_x: np.ndarray, t_z: np.ndarray, r_z: np.ndarray, a: float, gamma: float
) -> np.ndarray:
    ratio_x = (t_x / r_x) / ((1 + a) / 2 * r_x + (1 - a) / 2)
    ratio_z = (r_z / t_z) / ((1 + a) / 2 * r_z + (1 - a) / 2)
    votes = ratio_x[:, :, None] * ratio_z[:, None, :] > gamma
    majority = votes.sum(axis=0) * 2 > t_x.shape[0]
    return -majority.mean(axis=1)


def test_rmia_scores_chunked_match_naive(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    t_x, r_x = rng.gamma(1.0, 0.5, (2, 4, 23))
    t_z, r_z = rng.gamma(1.0, 0.5, (2, 4, 31))
    monkeypatch.setattr(mia_module, "_CHUNK_ELEMENTS", 40)  # one candidate row per block
    for a in RMIA_A:
        scores = rmia_scores(t_x, r_x, t_z, r_z, a)
        for g, gamma in enumerate(RMIA_GAMMAS):
            np.testing.assert_allclose(scores[g], _naive_scores(t_x, r_x, t_z, r_z, a, gamma))


def test_rmia_zero_losses_act_as_tiny_losses() -> None:
    # unguarded, s_T(x) = s_R(x) = 0 gives r(x) = nan and never votes; floored, r(x) = 1/floor
    # is huge, so every z votes for it (score −1).
    scores = rmia_scores([[0.0, 0.3]], [[0.0, 0.3]], [[0.4, 1.0]], [[0.5, 0.9]], a=1.0)
    assert np.isfinite(scores).all()
    assert scores[0, 0] == -1.0
    negative_zero = rmia_scores([[-0.0]], [[-0.0]], [[0.4]], [[0.5]], a=1.0)
    assert negative_zero[0, 0] == -1.0
    with pytest.raises(ValueError, match="non-negative"):
        rmia_scores([[-0.5]], [[1.0]], [[0.4]], [[0.5]], a=1.0)


def test_tpr_at_fpr_takes_best_point_within_budget() -> None:
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.9, 0.4, 0.5, 0.1])
    assert tpr_at_fpr(labels, scores, 1e-4) == pytest.approx(0.5)
    assert tpr_at_fpr(labels, scores, 0.5) == pytest.approx(1.0)


@pytest.mark.parametrize(("n_negatives", "expected"), [(10_000, 1.0), (5_000, 0.0)])
def test_tpr_at_fpr_boundary_is_inclusive(n_negatives: int, expected: float) -> None:
    # one negative outranks both positives: FPR 1/n there, so TPR counts only if 1/n ≤ 1e-4.
    labels = np.r_[np.ones(2), np.zeros(n_negatives)]
    scores = np.r_[[0.9, 0.5], [0.95], np.full(n_negatives - 1, 0.1)]
    assert tpr_at_fpr(labels, scores, 1e-4) == pytest.approx(expected)


def _rmia_inputs(
    rng: np.random.Generator, forget_target_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    aug, n_forget, n_val, n_pop = 4, 60, 200, 500
    ref_cand = rng.gamma(2.0, 0.5, (aug, n_forget + n_val))
    target_cand = ref_cand * rng.lognormal(0.0, 0.1, ref_cand.shape)
    target_cand[:, :n_forget] *= forget_target_scale
    ref_pop = rng.gamma(2.0, 0.5, (aug, n_pop))
    target_pop = ref_pop * rng.lognormal(0.0, 0.1, ref_pop.shape)
    labels = np.r_[np.ones(n_forget, np.int64), np.zeros(n_val, np.int64)]
    return target_cand, ref_cand, target_pop, ref_pop, labels


def test_rmia_detects_memorised_forget_set() -> None:
    result = rmia(*_rmia_inputs(np.random.default_rng(10), forget_target_scale=0.01))
    assert result.auc > 95.0
    assert result.tpr_at_0_01pct_fpr > 50.0


def test_rmia_without_membership_signal_is_chance() -> None:
    rng = np.random.default_rng(11)
    target_cand, _, target_pop, _, labels = _rmia_inputs(rng, forget_target_scale=1.0)
    result = rmia(target_cand, target_cand, target_pop, target_pop, labels)
    assert abs(result.auc - 50.0) < 10.0
    few_labels = np.array([1, 1, 0, 0, 0, 0])
    constant = rmia(np.ones((2, 6)), np.ones((2, 6)), np.ones((2, 9)), np.ones((2, 9)), few_labels)
    assert constant.auc == pytest.approx(50.0)
    assert constant.tpr_at_0_01pct_fpr == pytest.approx(0.0)


def test_rmia_reports_best_grid_point() -> None:
    target_cand, ref_cand, target_pop, ref_pop, labels = _rmia_inputs(
        np.random.default_rng(12), forget_target_scale=0.7
    )
    result = rmia(torch.from_numpy(target_cand), ref_cand, target_pop, ref_pop, labels)
    outcomes = {}
    for a in RMIA_A:
        scores = rmia_scores(target_cand, ref_cand, target_pop, ref_pop, a)
        for g, gamma in enumerate(RMIA_GAMMAS):
            outcomes[gamma, a] = (
                100.0 * tpr_at_fpr(labels, scores[g], 1e-4),
                100.0 * roc_auc_score(labels, scores[g]),
            )
    best = max(outcomes.values())
    assert (result.tpr_at_0_01pct_fpr, result.auc) == pytest.approx(best)
    assert outcomes[result.gamma, result.a] == pytest.approx(best)


def test_rmia_rejects_bad_labels_and_shapes() -> None:
    losses = np.ones((2, 4))
    with pytest.raises(ValueError, match="both classes"):
        rmia(losses, losses, losses, losses, np.ones(4))
    with pytest.raises(ValueError, match="augmentations"):
        rmia(losses, losses, np.ones((3, 4)), np.ones((3, 4)), np.array([1, 0, 1, 0]))
