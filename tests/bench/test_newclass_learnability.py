"""bench/newclass_learnability.py: the label budget N means N frames of the new class, in the stream's own mix."""
from __future__ import annotations

import pytest

from bench.newclass_learnability import _first_with


def test_the_prefix_holds_exactly_n_cracks_and_the_others_around_them() -> None:
    names = ["ok", "scratch", "crack", "ok", "dent", "crack", "stain", "ok", "crack", "ok"] * 10
    for n in (1, 5, 30):
        pick = _first_with(names, n, seed=3)
        got = [names[i] for i in pick]
        assert got.count("crack") == n and got[-1] == "crack"   # the shortest such prefix
        assert len(set(pick.tolist())) == len(pick)              # no frame twice
    assert list(_first_with(names, 5, seed=3)) == list(_first_with(names, 5, seed=3))  # seeded


def test_asking_for_more_cracks_than_the_pool_holds_says_so() -> None:
    with pytest.raises(ValueError, match="holds 2 crack frames, fewer than 3"):
        _first_with(["crack", "ok", "crack"], 3, seed=0)


@pytest.mark.parametrize("option,message", [({"train": "backbone"}, "train 'backbone': use all, head or last"),
                                            ({"augment": "mirror"}, "unknown augmentation 'mirror'"),
                                            ({"scope": "old"}, "scope 'old': use all or new")])
def test_an_unknown_option_fails_before_anything_is_loaded(tmp_path, option, message) -> None:
    from bench.newclass_learnability import learn_newclass

    with pytest.raises(ValueError, match=message):
        learn_newclass(tmp_path / "no-state", ([], []), ([], []), 25, [200], 0, **option)
