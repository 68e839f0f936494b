"""`edgeloop bench fuzz` on a few thousand inputs: nothing escapes as other than a counted rejection."""
from __future__ import annotations

from bench.fuzz import fuzz


def test_fuzz_finds_no_escape_and_stores_what_it_accepts() -> None:
    fig = fuzz(3000, seed=3)
    assert fig["escapes"] == 0, fig["escape_examples"]
    assert fig["wedges"] == 0, fig["wedge_examples"]
    assert set(fig["per_target"]) == {"sample_path", "envelope", "report", "promotion", "image"}
    # the hostile stream is not all rejected: valid samples get through and are stored
    assert 0 < fig["rejected_per_target"]["sample_path"] < fig["per_target"]["sample_path"]
    assert fig["samples_stored"] > 0
