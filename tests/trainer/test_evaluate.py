"""Metrics on hand-made arrays, forgetting, the stratified split and the promotion gates."""
import math

import numpy as np
import pytest
import torch

from trainer.evaluate import (
    ForgettingTracker,
    accuracy,
    compute_metrics,
    confusion_matrix,
    evaluate_model,
    forgetting,
    gate,
    macro_f1,
    per_class_accuracy,
    stratified_split,
    sign_test,
    two_slice_gate,
    weighted_accuracy,
)

Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_and_accuracy():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)


def test_per_class_accuracy_nan_for_absent():
    pca = per_class_accuracy(confusion_matrix(Y_TRUE, Y_PRED, 4))
    assert pca[:3].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert math.isnan(pca[3])


def test_macro_f1_by_hand():
    # class 0: tp2 fp0 fn1 -> 4/5; class 1: tp1 fp1 fn1 -> 1/2; class 2: tp1 fp1 fn0 -> 2/3; class 3 absent
    f1 = macro_f1(confusion_matrix(Y_TRUE, Y_PRED, 4))
    assert f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_compute_metrics_json_friendly():
    m = compute_metrics(Y_TRUE, Y_PRED, 4)
    assert m["per_class"][3] is None and m["n"] == 6 and m["confusion"][0] == [2, 1, 0, 0]


def test_forgetting_tracker():
    t = ForgettingTracker()
    t.update([0.9, None])
    t.update([0.5, 0.8])
    t.update([0.6, 0.7])
    assert t.best == [0.9, 0.8]
    # (0.9-0.6 + 0.8-0.7)/2 = 0.2
    assert t.forgetting([0.6, 0.7]) == pytest.approx(0.2)
    assert t.forgetting([0.6, 0.7], classes=[1]) == pytest.approx(0.1)
    assert forgetting([0.5], [0.5]) == 0.0


def test_stratified_split_per_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    held, rest = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert len(np.intersect1d(held, rest)) == 0 and len(held) + len(rest) == 16
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # singleton class stays in training
    again, _ = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert np.array_equal(held, again)


def test_gate_reasons_carry_numbers():
    ok, why = gate({"accuracy": 0.91}, {"accuracy": 0.915}, max_regression=0.01)
    assert ok and "0.9100" in why and "0.9150" in why
    ok, why = gate({"accuracy": 0.80}, {"accuracy": 0.90}, max_regression=0.01)
    assert not ok and "regression 0.1000" in why
    ok, _ = gate({"accuracy": 0.5}, None)
    assert ok
    ok, why = gate({"accuracy": 0.9, "per_class": [1.0, 0.5]}, {"accuracy": 0.9, "per_class": [0.9, 0.9]},
                   max_class_regression=0.1)
    assert not ok and "class 1" in why


def test_evaluate_model_runs():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        model[1].bias.zero_()
    x = torch.eye(4)[:3]
    m = evaluate_model(model, x, torch.tensor([0, 1, 2]), 3)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0


def _flip(names, wrong):
    """``names`` with the first ``wrong`` of them predicted as the other class."""
    return [("b" if n == "a" else "a") if i < wrong else n for i, n in enumerate(names)]


# 80 held-out samples of the old world, then 20 recent uploads (the last ones).
OLD = ["a", "b"] * 40
RECENT = ["a", "b"] * 10
LIMITS = {"max_regression": 0.02, "max_forgetting": 0.10, "min_recent": 20}


def test_two_slice_gate_promotes_a_model_that_adapts():
    """Better on what the cameras see now, a little worse on the old world (within max_forgetting)."""
    deployed = OLD + _flip(RECENT, 6)  # 94 % on the whole set, 70 % recent
    candidate = _flip(OLD, 8) + _flip(RECENT, 2)  # 90 % on the whole set, 90 % recent
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS)
    assert d["promote"], d["reason"]
    assert d["recent"] == {"n": 20, "candidate_accuracy": 0.9, "deployed_accuracy": 0.7, "wins": 4, "losses": 0}
    assert d["best"]["accuracy"] == pytest.approx(0.94) and d["candidate"]["accuracy"] == pytest.approx(0.90)
    assert d["candidate"]["forgetting"] > 0 and d["reason"].count("whole set:") == 2 and "recent 20:" in d["reason"]
    # Too few recent uploads to judge on: the whole set alone, with max_regression -> kept.
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 19, **LIMITS)
    assert not d["promote"] and "recent" not in d and "regression 0.0400 > allowed 0.0200" in d["reason"]


def test_two_slice_gate_rejects_a_regression_on_the_recent_slice():
    deployed = OLD + _flip(RECENT, 6)
    candidate = OLD + _flip(RECENT, 10)  # same old world, worse on the recent uploads
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS)
    assert not d["promote"] and "recent 20: accuracy 0.5000 vs best 0.7000" in d["reason"]


def test_weighted_recent_slice_judges_the_stream_not_the_uploads():
    """Uploads chosen with p_select 1 (weight 1: uncertain or hinted frames) and 0.1 (weight 10: frames like the many
    the camera did not send). The candidate misses six of the former, the deployed version three of the latter:
    on the uploads the candidate is worse (0.70 vs 0.85), on the stream they stand for it is better."""
    deployed_recent = RECENT[:17] + _flip(RECENT[17:], 3)
    candidate_recent = _flip(RECENT, 6)
    w = [1.0] * 6 + [10.0] * 14
    plain = two_slice_gate(OLD + RECENT, OLD + candidate_recent, OLD + deployed_recent, ["a", "b"], 20, **LIMITS)
    assert not plain["promote"] and "weighted" not in plain["recent"]
    d = two_slice_gate(OLD + RECENT, OLD + candidate_recent, OLD + deployed_recent, ["a", "b"], 20, **LIMITS,
                       recent_weights=w)
    assert d["promote"], d["reason"]
    assert d["recent"]["candidate_accuracy"] == pytest.approx(140 / 146)
    assert d["recent"]["deployed_accuracy"] == pytest.approx(116 / 146)
    assert (d["recent"]["candidate_unweighted"], d["recent"]["deployed_unweighted"]) == (0.7, 0.85)
    assert d["recent"]["weighted"] is True and (d["recent"]["wins"], d["recent"]["losses"]) == (3, 6)
    # The weights may cover every held-out sample: the recent slice takes its own (the last n_recent).
    d2 = two_slice_gate(OLD + RECENT, OLD + candidate_recent, OLD + deployed_recent, ["a", "b"], 20, **LIMITS,
                        recent_weights=[1.0] * len(OLD) + w)
    assert d2["recent"] == d["recent"]


def test_weighted_accuracy_checks_its_lengths():
    assert weighted_accuracy(["a", "b"], ["a", "a"], [3.0, 1.0]) == pytest.approx(0.75)
    assert weighted_accuracy([], [], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions, 2 truths, 1 weights"):
        weighted_accuracy(["a", "b"], ["a", "a"], [1.0])


def test_sign_test_is_the_exact_binomial_tail():
    assert sign_test(0, 0) == 1.0 and sign_test(5, 0) == 1.0
    assert sign_test(0, 1) == 0.5 and sign_test(0, 5) == pytest.approx(1 / 32)
    assert sign_test(2, 4) == pytest.approx((15 + 6 + 1) / 64)  # P(X >= 4), X ~ Binomial(6, 1/2)


def _trade(n_lost: int, n_won: int) -> tuple[list[str], list[str]]:
    """A deployed version right on every recent sample but the last 6, and a candidate that gets ``n_won`` of
    those 6 right and loses the first ``n_lost`` the deployed version gets right (the old world identical)."""
    deployed = OLD + RECENT[:14] + _flip(RECENT[14:], 6)
    candidate = OLD + _flip(RECENT[:n_lost], n_lost) + RECENT[n_lost:14] + RECENT[14:14 + n_won] + _flip(RECENT[14 + n_won:], 6 - n_won)
    return deployed, candidate


def test_paired_recent_slice_passes_a_loss_chance_explains_and_refuses_a_significant_one():
    """Two samples behind on 20 (10 points) with 2 wins and 4 losses: the fixed allowance refuses, a sign test
    says chance does it 34 % of the time. Five losses and no win (p 1/32) stay refused."""
    deployed, candidate = _trade(4, 2)
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS)
    assert not d["promote"] and "paired" not in d["reason"] and "p_worse" not in d["recent"]
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS, paired="always")
    assert d["promote"], d["reason"]
    assert d["recent"]["wins"] == 2 and d["recent"]["losses"] == 4 and d["recent"]["p_worse"] == pytest.approx(22 / 64)
    assert "paired (always): 2 wins, 4 losses, p 0.344 >= 0.05: not significantly worse" in d["reason"]
    deployed, candidate = _trade(5, 0)
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS, paired="always")
    assert not d["promote"] and "paired (always): 0 wins, 5 losses, p 0.031 < 0.05: worse" in d["reason"]
    # At level 0.5 even 2 wins against 4 losses are too many.
    deployed, candidate = _trade(4, 2)
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS, paired="always", paired_alpha=0.5)
    assert not d["promote"] and "p 0.344 < 0.5: worse" in d["reason"]
    with pytest.raises(ValueError, match="paired must be one of off, new-class, always, not 'sometimes'"):
        two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS, paired="sometimes")


def test_paired_new_class_judges_only_the_first_version_that_knows_a_class_the_deployed_one_does_not():
    """The deployed version knows a and b; the recent slice holds c, which only the candidate knows. The candidate
    gets 2 of the 4 c right and loses 4 old samples: 10 points behind, p 0.34 -> promoted under "new-class". Against
    a deployed version that knows c too, or with no c in the recent slice, the allowance alone judges."""
    truth = OLD + RECENT[:16] + ["c"] * 4
    deployed = OLD + RECENT[:16] + ["a"] * 4                       # 16/20 recent
    candidate = OLD + _flip(RECENT[:4], 4) + RECENT[4:16] + ["c", "c", "a", "a"]  # 14/20 recent
    args = (truth, candidate, deployed, ["a", "b", "c"], 20)
    d = two_slice_gate(*args, **LIMITS, paired="new-class", deployed_labels=["a", "b"])
    assert d["promote"], d["reason"]
    assert d["recent"]["paired"] == "new class c" and "paired (new class c): 2 wins, 4 losses, p 0.344" in d["reason"]
    for kw in ({"deployed_labels": ["a", "b", "c"]}, {"deployed_labels": None}, {"paired": "off", "deployed_labels": ["a", "b"]}):
        d = two_slice_gate(*args, **LIMITS, **{"paired": "new-class", **kw})
        assert not d["promote"] and "paired" not in d["reason"] and "paired" not in d["recent"], kw
    # No c among the recent samples: nothing new to judge by, whatever the candidate's label list.
    truth, deployed = OLD + RECENT, OLD + RECENT
    d = two_slice_gate(truth, OLD + _flip(RECENT, 2), deployed, ["a", "b", "c"], 20, **LIMITS, paired="new-class",
                       deployed_labels=["a", "b"])
    assert not d["promote"] and "paired" not in d["recent"]


def test_paired_recent_slice_does_not_relax_the_whole_set():
    """The test is paired on the recent slice only: forgetting on the whole set is refused as before."""
    deployed = OLD + RECENT
    candidate = _flip(OLD, 12) + RECENT  # 15 points behind on the old world, identical on the recent slice
    d = two_slice_gate(OLD + RECENT, candidate, deployed, ["a", "b"], 20, **LIMITS, paired="always")
    assert not d["promote"] and "paired" not in d["reason"] and "regression 0.1200 > allowed 0.1000" in d["reason"]


def test_two_slice_gate_without_a_deployed_version_and_with_new_names():
    d = two_slice_gate(OLD, OLD, None, ["a", "b"], 0, **LIMITS)
    assert d["promote"] and d["reason"] == "no deployed version to compare with" and d["candidate"]["forgetting"] == 0.0
    # A held-out label the candidate does not know yet, and a deployed model predicting an unknown name.
    truth = OLD + ["c"]
    d = two_slice_gate(truth, OLD + ["a"], OLD + ["z"], ["a", "b"], 1, **LIMITS)
    assert set(d["candidate"]["per_class"]) == {"a", "b", "c"} and d["candidate"]["per_class"]["c"] == 0.0
    assert "z" not in d["best"]["per_class"]  # no sample of z: no per-class figure


def test_two_slice_gate_never_promotes_a_model_that_answers_one_class():
    """Whatever the baseline: no deployed version, or a deployed version that is dead too."""
    truth = ["a", "b", "c"] * 20
    dead = ["a"] * 60
    for deployed in (None, dead, ["b"] * 60):
        d = two_slice_gate(truth, dead, deployed, ["a", "b", "c"], 0, **LIMITS)
        assert not d["promote"] and d["dead"] and d["reason"].startswith("never promoted: the candidate predicts one class")
    # per-class recall: two classes never recognised although the predictions are spread
    spread = ["a" if t == "a" else ("c" if t == "b" else "a") for t in truth]
    d = two_slice_gate(truth, spread, None, ["a", "b", "c"], 0, **LIMITS)
    assert not d["promote"] and "recognises one class at most" in d["reason"]
    # too few samples to judge: the usual rules apply
    assert two_slice_gate(truth[:12], dead[:12], None, ["a", "b", "c"], 0, **LIMITS)["promote"]


def test_collapse_reason_names_one_class_and_chance():
    from trainer.evaluate import collapse_reason, one_class_reason

    y = np.array([0, 1, 2, 3] * 20)
    assert "predicts one class" in one_class_reason(np.zeros(80, int), y, 4)
    assert one_class_reason(y, y, 4) is None and collapse_reason(y, y, 4) is None
    chance = np.random.default_rng(0).integers(0, 4, 80)  # a spread-out guess
    assert one_class_reason(chance, y, 4) is None and "accuracy at chance" in collapse_reason(chance, y, 4)


def test_onnx_argmax_scores_in_small_batches(tmp_path) -> None:
    """The trainer keeps the deployed version's onnxruntime session between updates, and the session's arena
    keeps the largest batch it ever ran: held-out sets are scored ORT_BATCH frames at a time, with the same
    predictions as one big call."""
    import sys
    from pathlib import Path

    from trainer.evaluate import ORT_BATCH, onnx_argmax, onnx_session
    from trainer.export import read_meta

    sys.path.insert(0, str(Path(__file__).parent))
    from _helpers import bootstrap_state

    state = bootstrap_state(tmp_path, ["red", "green"])
    [path] = sorted(state.glob("**/v0001*.onnx"))
    meta = read_meta(path)
    sess = onnx_session(path)
    sizes: list[int] = []

    class Recording:
        def run(self, names, feed):
            sizes.append(len(feed[meta.input_name]))
            return sess.run(names, feed)

    x = np.random.default_rng(0).random((2 * ORT_BATCH + 5, 3, 16, 16), dtype=np.float32)
    pred = onnx_argmax(Recording(), meta.input_name, meta.output_name, x)
    assert sizes == [ORT_BATCH, ORT_BATCH, 5]
    whole = sess.run([meta.output_name], {meta.input_name: x})[0].argmax(1)
    assert pred.tolist() == whole.tolist()
    assert onnx_argmax(sess, meta.input_name, meta.output_name, x[:0]).shape == (0,)
