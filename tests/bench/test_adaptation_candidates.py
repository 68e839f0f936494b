"""bench.adaptation_candidates: the gate's view of candidates, apart by what made them."""
from bench.adaptation_candidates import candidate_scores


def _d(t, whole, cand, best, rehearsal=None):
    reason = (f"whole set: accuracy {whole} vs best 0.97 (delta -0.01, allowed regression 0.1000); "
              f"recent 40: accuracy {cand} vs best {best}: regression 0.1 > allowed 0.0200")
    return {"t": t, "reason": reason, **({"rehearsal": rehearsal} if rehearsal else {})}


def test_candidates_are_split_by_kind_and_only_after_the_given_second_with_both_slices() -> None:
    rows = [{"decisions": [_d(50.0, 0.5, 0.1, 0.9),                      # before the new class: left out
                           _d(80.0, 0.94, 0.80, 0.90), _d(90.0, 0.92, 0.70, 0.90, rehearsal=20),
                           _d(95.0, 0.90, 0.60, 0.90, rehearsal=20),
                           {"t": 99.0, "reason": "only 3 held-out samples (< 20): cannot judge"}]},
            {"decisions": [_d(85.0, 0.96, 0.85, 0.85)]}]
    sc = candidate_scores(rows, after_s=78.0)
    assert sc["update"] == {"n": 2, "whole": 0.95, "recent_margin": -5.0}
    assert sc["rehearsal"] == {"n": 2, "whole": 0.91, "recent_margin": -25.0}
    assert candidate_scores([], 0.0)["update"] == {"n": 0, "whole": None, "recent_margin": None}
