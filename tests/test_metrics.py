"""Our metrics, losses and weights against scikit-learn, torchmetrics, fairlearn and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    jaccard_score,
    mean_absolute_error,
    precision_score,
    recall_score,
)
from sklearn.utils.class_weight import compute_class_weight
from torchmetrics.functional.classification import multiclass_calibration_error
from torchmetrics.functional.regression import concordance_corrcoef

from avx.fuse import metrics as M
from avx.fuse.tasks import ccc_loss, class_weights, decide, resampling_weights


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_multiclass_report_matches_scikit_learn(rng: np.random.Generator) -> None:
    y, p = rng.integers(0, 6, 300), rng.integers(0, 5, 300)  # class 5 never predicted
    r = M.multiclass_report(y, p, 6)
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p)) == r["weighted_accuracy"]
    assert r["unweighted_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    for avg in ("macro", "weighted", "micro"):
        assert r[f"{avg}_f1"] == pytest.approx(f1_score(y, p, average=avg, zero_division=0))
        assert r[f"{avg}_precision"] == pytest.approx(precision_score(y, p, average=avg, zero_division=0))
        assert r[f"{avg}_recall"] == pytest.approx(recall_score(y, p, average=avg, zero_division=0))
    assert r["macro_f1"] != pytest.approx(r["micro_f1"])  # the averages really differ here


def test_multilabel_report_matches_scikit_learn(rng: np.random.Generator) -> None:
    y = (rng.random((200, 6)) < 0.3).astype(int)
    p = (rng.random((200, 6)) < 0.3).astype(int)
    p[:, 2] = 0  # a class never predicted
    r = M.multilabel_report(y, p)
    assert r["jaccard_accuracy"] == pytest.approx(jaccard_score(y, p, average="samples", zero_division=1))
    for avg in ("micro", "macro"):
        assert r[f"{avg}_f1"] == pytest.approx(f1_score(y, p, average=avg, zero_division=0))
        assert r[f"{avg}_precision"] == pytest.approx(precision_score(y, p, average=avg, zero_division=0))
    assert r["subset_accuracy"] == pytest.approx(accuracy_score(y, p))


def test_regression_metrics_match_torchmetrics_and_scipy(rng: np.random.Generator) -> None:
    y = rng.normal(size=(500, 2)).astype(np.float32)
    p = (0.6 * y + rng.normal(0.2, 0.5, size=y.shape)).astype(np.float32)
    r = M.regression_report(y, p, ["valence", "arousal"])
    for k, name in enumerate(["valence", "arousal"]):
        ref = concordance_corrcoef(torch.tensor(p[:, k]), torch.tensor(y[:, k])).item()
        assert r[f"ccc_{name}"] == pytest.approx(ref, abs=1e-5)
        assert r[f"pearson_{name}"] == pytest.approx(stats.pearsonr(y[:, k], p[:, k]).statistic, abs=1e-6)
        assert r[f"mae_{name}"] == pytest.approx(mean_absolute_error(y[:, k], p[:, k]), abs=1e-6)
    assert r["ccc"] == pytest.approx((r["ccc_valence"] + r["ccc_arousal"]) / 2)
    # The training loss is 1 - the metric's CCC.
    loss = ccc_loss(torch.tensor(p[:, :1]), torch.tensor(y[:, :1])).item()
    assert loss == pytest.approx(1 - r["ccc_valence"], abs=1e-5)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_and_reliability_match_torchmetrics(rng: np.random.Generator, n_bins: int) -> None:
    logits = rng.normal(size=(400, 4)) * 2
    probs = torch.softmax(torch.tensor(logits), -1).numpy()
    y = rng.integers(0, 4, 400)
    ref = multiclass_calibration_error(torch.tensor(probs), torch.tensor(y), 4, n_bins=n_bins, norm="l1")
    assert M.expected_calibration_error(y, probs, n_bins) == pytest.approx(ref.item(), abs=1e-6)
    diag = M.reliability_diagram(y, probs, n_bins)
    assert sum(diag["count"]) == 400 and len(diag["accuracy"]) == n_bins


def test_brier_is_the_per_class_mean_of_scikit_learns(rng: np.random.Generator) -> None:
    probs = rng.dirichlet(np.ones(5), 100)
    y = rng.integers(0, 5, 100)
    ref = np.mean([brier_score_loss((y == c).astype(int), probs[:, c]) for c in range(5)])
    assert M.brier_per_class(y, probs) == pytest.approx(ref)
    multihot = (rng.random((100, 5)) < 0.4).astype(int)
    ref = np.mean([brier_score_loss(multihot[:, c], probs[:, c]) for c in range(5)])
    assert M.brier_per_class(multihot, probs) == pytest.approx(ref)


def test_temperature_scaling_recovers_overconfidence(rng: np.random.Generator) -> None:
    true_logits = rng.normal(size=(3000, 3)) * 1.5
    p = torch.softmax(torch.tensor(true_logits), -1)
    y = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(0)).squeeze(1).numpy()
    t = M.fit_temperature(true_logits * 3.0, y)  # 3x overconfident
    assert t == pytest.approx(3.0, rel=0.15)
    before = M.expected_calibration_error(y, torch.softmax(torch.tensor(true_logits * 3), -1).numpy())
    after = M.expected_calibration_error(y, torch.softmax(torch.tensor(true_logits * 3 / t), -1).numpy())
    assert after < before / 2


def test_fairness_matches_fairlearn(rng: np.random.Generator) -> None:
    groups = rng.choice(["a", "b", "c"], 400)
    y = rng.integers(0, 2, 400)
    p = np.where(groups == "a", rng.random(400) < 0.7, rng.random(400) < 0.4).astype(int)
    assert M.demographic_parity_difference(p, groups) == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=groups)
    )
    assert M.equalized_odds_difference(y, p, groups) == pytest.approx(
        equalized_odds_difference(y, p, sensitive_features=groups)
    )
    # Multiclass: one-vs-rest per class with fairlearn's definitions, averaged.
    yc, pc = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    rep = M.fairness_report(yc, pc, groups, 4)
    dpd = np.mean(
        [demographic_parity_difference(yc == c, pc == c, sensitive_features=groups) for c in range(4)]
    )
    eod = np.mean([equalized_odds_difference(yc == c, pc == c, sensitive_features=groups) for c in range(4)])
    assert rep["dpd"] == pytest.approx(dpd) and rep["eod"] == pytest.approx(eod)
    f1 = {g: f1_score(yc[groups == g], pc[groups == g], average="macro") for g in "abc"}
    assert rep["macro_f1_by_group"] == pytest.approx(f1)
    # The two-stage paper's Eq. 2 as its tables compute it: the mean absolute pairwise difference.
    pairs = [abs(f1["a"] - f1["b"]), abs(f1["a"] - f1["c"]), abs(f1["b"] - f1["c"])]
    assert rep["f1_bias"] == pytest.approx(np.mean(pairs))
    # ... and its printed values (x 100): Table 5 model 1 (two groups), Table 4 models 1 and 4.
    assert 100 * M.f1_bias([0.634, 0.653]) == pytest.approx(1.86, abs=0.05)
    assert 100 * M.f1_bias([0.646, 0.632, 0.645, 0.599]) == pytest.approx(2.60, abs=0.05)
    assert 100 * M.f1_bias([0.536, 0.533, 0.582, 0.438]) == pytest.approx(7.27, abs=0.05)
    one = M.fairness_report(yc, pc, np.full(400, "x"), 4)  # a single group
    assert one["dpd"] == one["eod"] == one["f1_bias"] == 0.0


def test_bootstrap_and_paired_ttest(rng: np.random.Generator) -> None:
    y, p = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    p[:150] = y[:150]
    stat = lambda i: accuracy_score(y[i], p[i])  # noqa: E731
    lo, hi = M.bootstrap_ci(stat, 300, n_boot=300, seed=1)
    assert lo < accuracy_score(y, p) < hi and hi - lo < 0.2
    assert (lo, hi) == M.bootstrap_ci(stat, 300, n_boot=300, seed=1)
    a, b = rng.normal(0.6, 0.02, 5), rng.normal(0.62, 0.02, 5)
    assert M.paired_ttest(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert np.isnan(M.paired_ttest([0.5], [0.6]))


def test_class_weights_and_resampling(rng: np.random.Generator) -> None:
    y = np.concatenate([np.zeros(50), np.ones(30), np.full(20, 2), [-1, -1]]).astype(int)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y[y >= 0])
    np.testing.assert_allclose(class_weights(y, 3, "inverse"), ref, rtol=1e-6)
    eff = class_weights(y, 3, "effective:0.99")
    raw = (1 - 0.99) / (1 - 0.99 ** np.array([50, 30, 20]))
    np.testing.assert_allclose(eff, raw / raw.sum() * 3, rtol=1e-5)
    assert eff[2] > eff[1] > eff[0] and class_weights(y, 3, "none") is None
    w = resampling_weights(y, "over")
    assert [w[y == c].sum() for c in range(3)] == pytest.approx([50, 50, 50]) and w[y < 0].sum() == 0
    w = resampling_weights(y, "under")
    assert [w[y == c].sum() for c in range(3)] == pytest.approx([20, 20, 20])


def test_multilabel_decision_rules() -> None:
    probs = np.array([[0.9, 0.8, 0.1, 0.1], [0.3, 0.3, 0.3, 0.3]])
    # Share rule: a class is on when its share of the summed probability exceeds 1/C.
    assert decide(probs, "multilabel", None).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    assert decide(probs, "multilabel", 0.25).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize(
    ("y", "p", "groups"),
    [
        ([1, 0, 0, 0], [1, 0, 0, 0], "aabb"),  # group b has no positives: its TPR counts as 0
        ([1, 1, 0, 0], [1, 0, 1, 0], "aabb"),
        ([0, 0, 0, 0], [1, 0, 1, 0], "aabb"),  # nobody positive
        ([1, 1, 1, 1], [1, 0, 1, 1], "aabb"),  # nobody negative
        ([1, 1, 0, 0], [1, 1, 0, 0], "abab"),
        ([0, 1, 0, 1, 1], [1, 1, 0, 0, 1], "aabbc"),  # group c: one positive, no negatives
        ([1, 0, 1], [1, 1, 1], "aaa"),  # a single group
    ],
)
def test_equalized_odds_edge_cases_match_fairlearn(y: list, p: list, groups: str) -> None:
    y_, p_, g = np.array(y), np.array(p), np.array(list(groups))
    assert M.equalized_odds_difference(y_, p_, g) == pytest.approx(
        equalized_odds_difference(y_, p_, sensitive_features=g)
    )
    assert M.demographic_parity_difference(p_, g) == pytest.approx(
        demographic_parity_difference(y_, p_, sensitive_features=g)
    )


def test_the_scorer_table_is_the_one_source(rng: np.random.Generator) -> None:
    """Every scorer computed alone equals the same metric in a report, for every task it
    applies to; tables and headlines are read from the same table."""
    from avx.fuse.evaluate import ReportOptions, core_metrics, score

    names = ["a", "b", "c", "d"]
    y = {
        "multiclass": rng.integers(0, 4, 120),
        "multilabel": (rng.random((120, 4)) < 0.4).astype(float),
        "regression": rng.normal(size=(120, 2)),
    }
    probs = {
        "multiclass": rng.dirichlet(np.ones(4), 120),
        "multilabel": rng.random((120, 4)),
        "regression": y["regression"] + rng.normal(size=(120, 2)),
    }
    task_names = {"multiclass": names, "multilabel": names, "regression": ["valence", "arousal"]}
    cases = [(task, task_names[task], y[task], probs[task]) for task in M.TASKS]
    # a sentiment regressor also gets MOSI/MOSEI's metrics (sentiment on [-3, 3])
    cases.append(("regression", ["sentiment"], 3 * y["regression"][:, :1], 3 * probs["regression"][:, :1]))
    for task, dims, yt, pt in cases:
        rep = core_metrics(task, dims, yt, pt, ReportOptions())
        assert M.headline(task) == M.table_metrics(task)[0]
        for name, s in M.SCORERS.items():
            if task not in s.tasks or s.fn is None or not any(s.applies_to(d) for d in dims):
                continue
            assert score(name, task, dims, yt, pt) == pytest.approx(rep[name]), name
        assert set(M.table_metrics(task, dims)) <= set(rep)
    assert "acc7" in rep and "acc7" not in core_metrics("regression", ["valence"], yt, pt, ReportOptions())
    assert M.SCORERS["mae"].sign(0.5) == -0.5 and M.SCORERS["ccc"].sign(0.5) == 0.5
    with pytest.raises(Exception, match="does not apply to regression"):
        M.get_scorer("macro_f1", "regression")


def _rows(owner: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """The rows of the drawn samples, as the per-replicate bootstrap gathers them."""
    rows_of = np.split(np.arange(len(owner)), np.cumsum(np.bincount(owner))[:-1])
    return np.concatenate([rows_of[i] for i in draw])


@pytest.mark.parametrize("case", ["multiclass", "multilabel", "regression"])
def test_vectorised_bootstrap_equals_per_replicate_scikit_learn(rng: np.random.Generator, case: str) -> None:
    """``bootstrap_scorer`` (one pass over count-weighted statistics) gives the interval of
    the per-replicate loop over scikit-learn / ``ccc`` calls it replaced, to 1e-9, also with
    several rows per sample (frame-level) and classes missing from some replicates."""
    n = 40
    owner = np.repeat(np.arange(n), rng.integers(1, 4, n))  # 1–3 rows per sample
    r = len(owner)
    if case == "multiclass":
        y = rng.choice(4, r, p=[0.6, 0.3, 0.08, 0.02])
        p = np.where(rng.random(r) < 0.6, y, rng.integers(0, 5, r))  # class 4 only predicted
        name, ref = "macro_f1", lambda a, b: f1_score(a, b, average="macro", zero_division=0)
    elif case == "multilabel":
        y = (rng.random((r, 5)) < [0.5, 0.3, 0.1, 0.02, 0.0]).astype(int)
        p = np.where(rng.random((r, 5)) < 0.7, y, 1 - y)
        name, ref = "micro_f1", lambda a, b: f1_score(a, b, average="micro", zero_division=0)
        assert M.SCORERS["macro_f1"].resampled is not None
        lo, hi = M.bootstrap_scorer("macro_f1", y, p, owner, n, n_boot=200, seed=4)
        want = M.bootstrap_ci(
            lambda d: f1_score(y[_rows(owner, d)], p[_rows(owner, d)], average="macro", zero_division=0),
            n, n_boot=200, seed=4,
        )  # fmt: skip
        assert (lo, hi) == pytest.approx(want, abs=1e-9)
    else:
        y = rng.normal(size=(r, 2)) + 3.0
        p = 0.5 * y + rng.normal(size=(r, 2)) + 3.0
        name, ref = "ccc", lambda a, b: np.mean([M.ccc(a[:, k], b[:, k]) for k in range(2)])
    got = M.bootstrap_scorer(name, y, p, owner, n, n_boot=300, seed=7)
    want = M.bootstrap_ci(lambda d: ref(y[_rows(owner, d)], p[_rows(owner, d)]), n, n_boot=300, seed=7)
    assert np.isfinite(got).all() and got[0] < got[1]
    assert got == pytest.approx(want, abs=1e-9)
    assert got != M.bootstrap_scorer(name, y, p, owner, n, n_boot=300, seed=8)  # the seed matters


@pytest.mark.parametrize("case", ["multiclass", "multilabel"])
def test_vectorised_accuracy_bootstrap_equals_per_replicate(rng: np.random.Generator, case: str) -> None:
    """Accuracy (and the Jaccard accuracy of multi-label rows, empty union = 1) on each
    replicate equals scikit-learn's on the replicate's rows."""
    n = 30
    owner = np.repeat(np.arange(n), rng.integers(1, 3, n))
    r = len(owner)
    if case == "multiclass":
        y = rng.integers(0, 4, r)
        p = np.where(rng.random(r) < 0.6, y, rng.integers(0, 4, r))
        ref = accuracy_score
    else:
        y = (rng.random((r, 4)) < 0.3).astype(int)
        p = np.where(rng.random((r, 4)) < 0.7, y, 1 - y)
        p[:3] = 0
        y[:3] = 0  # empty rows: Jaccard 1
        ref = lambda a, b: jaccard_score(a, b, average="samples", zero_division=1)  # noqa: E731
    got = M.bootstrap_replicates("accuracy", y, p, owner, n, n_boot=100, seed=2)
    rng2 = np.random.default_rng(2)
    want = [ref(y[_rows(owner, d)], p[_rows(owner, d)]) for d in (rng2.integers(0, n, n) for _ in range(100))]
    np.testing.assert_allclose(got, want, atol=1e-12)
