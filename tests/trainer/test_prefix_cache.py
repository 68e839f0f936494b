"""trainer/prefix_cache.py: the gate's predictions with the frozen blocks' outputs reused are the model's own."""
import torch

from trainer.evaluate import predict
from trainer.nets import build_model
from trainer.prefix_cache import PrefixCache
from trainer.strategies import LabelledBatch, make_strategy

torch.set_num_threads(1)


def net(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", 4)
    with torch.no_grad():  # batch-norm statistics other than 0 / 1, so that using them or not shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_predictions_equal_the_whole_model_s_and_only_new_inputs_run_the_frozen_blocks():
    model, cache = net(), PrefixCache(batch_size=7)
    x = torch.rand(30, 3, 64, 64)
    keys = [("boot", i) for i in range(20)] + list(range(100, 110))
    assert (cache.predict(model, 2, x, keys) == predict(model, x)).all()
    assert cache.computed == 30 and len(cache) == 30
    # the window moves on: five inputs leave, three arrive; only the three run the frozen blocks
    x2, keys2 = torch.cat([x[5:], torch.rand(3, 3, 64, 64)]), keys[5:] + [110, 111, 112]
    assert (cache.predict(model, 2, x2, keys2) == predict(model, x2)).all()
    assert cache.computed == 33 and len(cache) == 28
    assert model.training  # the model's mode is left as it was


def test_a_change_in_the_frozen_blocks_empties_the_cache():
    model, cache = net(), PrefixCache()
    x, keys = torch.rand(12, 3, 64, 64), list(range(12))
    cache.predict(model, 2, x, keys)
    with torch.no_grad():
        model.features[1][1].running_mean.add_(0.5)  # a statistic of the second block: it is part of the prefix
    assert (cache.predict(model, 2, x, keys) == predict(model, x)).all()
    assert cache.computed == 24
    with torch.no_grad():
        model.features[3][0].weight.mul_(1.5)  # a block that learns: the cached outputs still hold
    assert (cache.predict(model, 2, x, keys) == predict(model, x)).all()
    assert cache.computed == 24


def test_updates_leave_the_frozen_blocks_computing_what_they_did_even_with_batch_norm_training():
    """With frozen_blocks, an update in training mode (freeze_bn off) still keeps the frozen blocks' statistics, so
    the cache stays valid; the blocks after them move."""
    model = net()
    s = make_strategy("iw-er", model, lambda p: torch.optim.Adam(p, lr=1e-2), capacity=50,
                      config={"frozen_blocks": 2, "freeze_bn": False, "replay_batch_size": 8})
    before = {k: v.clone() for k, v in model.features[:2].state_dict().items()}
    later = model.features[2][1].running_mean.clone()
    s.update(LabelledBatch(torch.rand(16, 3, 64, 64), torch.randint(0, 4, (16,))), steps=3)
    assert all(torch.equal(v, model.features[:2].state_dict()[k]) for k, v in before.items())
    assert not torch.equal(later, model.features[2][1].running_mean)
