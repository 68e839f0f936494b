"""Replay memory: bounds in samples and bytes, class balance, sampling, logits growth, state round trip."""
import numpy as np
import pytest
import torch

from trainer.replay import ReplayMemory


def _stream(n, classes, seed=0, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    y = torch.tensor([classes[i % len(classes)] for i in range(n)])
    return x, y


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_bounded_in_samples(policy):
    m = ReplayMemory(capacity=20, policy=policy, seed=1)
    x, y = _stream(200, [0, 1, 2])
    m.add(x, y)
    assert len(m) == 20 and m.seen == 200
    assert m.nbytes == 20 * (64 + 8 + 4 + 2)


@pytest.mark.parametrize("dtype,item", [("uint8", 1), ("float16", 2)])
def test_bounded_in_bytes(dtype, item):
    per = 64 * item + 8 + 4 + 2
    m = ReplayMemory(capacity=1000, max_bytes=10 * per + per // 2, x_dtype=dtype, seed=0)
    x, y = _stream(100, [0, 1])
    m.add(x, y)
    assert len(m) == 10 and m.nbytes <= m.max_bytes and m.limit == 10


def test_uint8_roundtrip_is_exact_for_8bit_images():
    m = ReplayMemory(capacity=10)
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255.0
    m.add(x, torch.arange(5))
    b = m.sample(5, np.random.default_rng(0))
    order = torch.argsort(b.y)
    assert torch.equal(b.x[order], x)


def test_class_balanced_when_new_classes_arrive():
    m = ReplayMemory(capacity=30, policy="class_balanced", seed=0)
    for classes in ([0, 1], [2, 3], [4, 5]):  # class-incremental: each phase has its own classes
        x, y = _stream(300, classes, seed=classes[0])
        m.add(x, y)
    counts = m.class_counts()
    assert sorted(counts) == [0, 1, 2, 3, 4, 5]
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_reservoir_follows_stream_mix():
    m = ReplayMemory(capacity=30, policy="reservoir", seed=0)
    for classes in ([0, 1], [2, 3], [4, 5]):
        m.add(*_stream(300, classes, seed=classes[0]))
    counts = m.class_counts()
    assert sum(counts.values()) == 30 and len(counts) >= 5


def test_balanced_sampling_and_determinism():
    m = ReplayMemory(capacity=40, policy="reservoir", seed=3)
    x, y = _stream(40, [0] * 9 + [1])  # 36 of class 0, 4 of class 1
    m.add(x, y)
    b = m.sample(8, np.random.default_rng(0), balanced=True)
    assert (b.y == 1).sum() == 4 and (b.y == 0).sum() == 4 and len(set(b.index.tolist())) == 8
    a1 = m.sample(10, np.random.default_rng(5)).index
    a2 = m.sample(10, np.random.default_rng(5)).index
    assert torch.equal(a1, a2)
    m2 = ReplayMemory(capacity=40, policy="reservoir", seed=3)
    m2.add(x, y)
    assert torch.equal(m.state_dict()["y"], m2.state_dict()["y"])


def test_logits_grow_with_head_and_mask_old_rows():
    m = ReplayMemory(capacity=10, store_logits=True)
    x, y = _stream(4, [0, 1])
    m.add(x, y, logits=torch.ones(4, 2))
    m.grow_logits(3)
    m.add(*_stream(2, [2], seed=1), logits=torch.full((2, 3), 2.0))
    b = m.sample(6, np.random.default_rng(0))
    assert b.logits.shape == (6, 3)
    old = b.y < 2
    assert b.logit_mask[old].tolist() == [[True, True, False]] * int(old.sum())
    assert b.logit_mask[~old].all()
    assert m.bytes_per_sample() == 64 + 8 + 4 + 2 + 3 * 4


def test_logit_growth_respects_byte_budget():
    per2 = 64 + 14 + 8
    m = ReplayMemory(capacity=100, max_bytes=10 * per2, store_logits=True)
    m.add(*_stream(10, [0, 1]), logits=torch.zeros(10, 2))
    assert len(m) == 10
    m.grow_logits(10)  # rows now 64+14+40 bytes: only 7 fit
    assert len(m) == m.limit == 7 and m.nbytes <= m.max_bytes


def _head(x):
    """A fixed 'model': 3 logits per row from the input's mean (what fill_logits is given)."""
    m = x.flatten(1).mean(1, keepdim=True)
    return torch.cat([m, 2 * m, -m], dim=1)


def test_fill_logits_turns_storage_on_and_stores_the_given_models_logits():
    m = ReplayMemory(capacity=10)  # a memory written without logits (as the bootstrap once did)
    x, y = _stream(6, [0, 1])
    m.add(x, y)
    assert not m.store_logits and m.rows_without_logits == 6
    assert m.fill_logits(_head, 3) == 6
    assert m.store_logits and m.rows_without_logits == 0
    b = m.sample(6, np.random.default_rng(0))
    assert b.logit_mask.all()
    torch.testing.assert_close(b.logits, _head(b.x))
    assert m.fill_logits(_head, 3) == 0  # nothing left to fill
    state = m.state_dict()  # ... and they are checkpointed
    m2 = ReplayMemory()
    m2.load_state_dict(state)
    assert m2.store_logits and m2.rows_without_logits == 0


def test_fill_logits_keeps_stored_targets_and_skips_non_finite_predictions():
    m = ReplayMemory(capacity=10, store_logits=True)
    x, y = _stream(4, [0, 1])
    m.add(x[:2], y[:2], logits=torch.full((2, 3), 5.0))  # memorised with their logits
    m.add(x[2:], y[2:])  # memorised without: these get filled
    bad = lambda t: torch.where(t.flatten(1).mean(1, keepdim=True) > 0, float("nan"), 0.0).expand(-1, 3)  # noqa: E731
    assert m.fill_logits(bad, 3) == 0 and m.rows_without_logits == 2  # a NaN target is worse than none
    assert m.fill_logits(_head, 3) == 2 and m.rows_without_logits == 0
    b = m.sample(4, np.random.default_rng(0))
    kept = (b.logits == 5.0).all(1)
    assert int(kept.sum()) == 2
    torch.testing.assert_close(b.logits[~kept], _head(b.x[~kept]))


def test_fill_logits_respects_the_byte_budget():
    per = 64 + 14  # uint8 1x8x8 + y/weight/count, no logits
    m = ReplayMemory(capacity=100, max_bytes=10 * per)
    m.add(*_stream(10, [0, 1]))
    assert len(m) == 10
    m.fill_logits(_head, 3)  # rows now 64 + 14 + 12 bytes: only 8 fit
    assert len(m) == m.limit == 8 and m.nbytes <= m.max_bytes and m.rows_without_logits == 0


def test_fill_logits_on_an_empty_memory_stores_logits_from_then_on():
    m = ReplayMemory(capacity=10)
    assert m.fill_logits(_head, 3) == 0 and m.store_logits
    x, y = _stream(2, [0, 1])
    m.add(x, y, logits=_head(x))
    assert m.rows_without_logits == 0


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_logits_from_a_function_are_predicted_only_for_the_samples_kept(policy):
    """Given a function, the memory predicts logits only for the samples it stores, and ends exactly as if it
    had been given every sample's logits (rows replaced twice within one batch included)."""
    x, y = _stream(60, [0, 1, 2], seed=3)
    eager = ReplayMemory(capacity=8, policy=policy, store_logits=True, seed=5)
    lazy = ReplayMemory(capacity=8, policy=policy, store_logits=True, seed=5)
    asked = []

    def head(xb):
        asked.append(len(xb))
        return _head(xb)

    for i in range(0, 60, 12):
        kept = eager.add(x[i:i + 12], y[i:i + 12], logits=_head(x[i:i + 12]))
        assert lazy.add(x[i:i + 12], y[i:i + 12], logits=head) == kept
    assert asked[0] == 12  # the first batch allocates the memory: every sample is predicted
    assert sum(asked[1:]) < 48  # then only the kept ones (the memory is full after the first batch)
    a, b = eager.sample(8, np.random.default_rng(0)), lazy.sample(8, np.random.default_rng(0))
    torch.testing.assert_close(b.x, a.x)
    torch.testing.assert_close(b.logits, a.logits)
    torch.testing.assert_close(b.logit_mask, a.logit_mask)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_state_dict_round_trip_continues_identically(policy):
    a = ReplayMemory(capacity=15, policy=policy, store_logits=True, seed=7)
    x, y = _stream(50, [0, 1, 2])
    a.add(x[:30], y[:30], torch.rand(30), torch.rand(30, 3))
    state = a.state_dict()
    b = ReplayMemory(capacity=1)
    b.load_state_dict(state)
    assert len(b) == len(a) and b.nbytes == a.nbytes and b.policy == policy
    for mem in (a, b):
        mem.add(x[30:], y[30:], torch.ones(20), torch.zeros(20, 3))
    sa, sb = a.state_dict(), b.state_dict()
    for k in ("x", "y", "weight", "logits", "nlogits"):
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(a.sample(5).index, b.sample(5).index)


def test_empty_memory():
    m = ReplayMemory(capacity=5)
    assert len(m) == 0 and m.nbytes == 0 and m.sample(3) is None
    m0 = ReplayMemory(capacity=0)
    m0.add(*_stream(3, [0]))
    assert len(m0) == 0
