"""Every strategy learns a tiny synthetic stream through its own update(); head growth keeps old classes."""
import numpy as np
import pytest
import torch
from torch import nn

from trainer.evaluate import predict
from trainer.nets import Classifier
from trainer.replay import ReplayMemory
from trainer.strategies import (
    STRATEGIES,
    LabelledBatch,
    LabelledSample,
    make_strategy,
)

torch.set_num_threads(1)
SHAPE = (1, 8, 8)


def tiny_model(num_classes: int, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Flatten(1), nn.Linear(64, 32), nn.ReLU()), 32, num_classes)


def templates(n: int = 4, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, *SHAPE), generator=g) > 0.5).float()


def make_data(classes, n_per_class, seed, tmpl=None):
    tmpl = templates() if tmpl is None else tmpl
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([c for c in classes for _ in range(n_per_class)])
    y = y[torch.randperm(len(y), generator=g)]
    x = (tmpl[y] * 0.7 + 0.3 * torch.rand((len(y), *SHAPE), generator=g)).clamp(0, 1)
    return x, y


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def small_settings(name):
    """10 replayed samples per step; EWC consolidates every 4 updates (the tiny streams have ~12)."""
    return {"replay_batch_size": 10, **({"ewc_window": 4} if name == "ewc" else {})}


def run_stream(strategy, x, y, batch=10, steps=2, p_select=None):
    for i in range(0, len(y), batch):
        p = None if p_select is None else p_select[i : i + batch]
        metrics = strategy.update(LabelledBatch(x[i : i + batch], y[i : i + batch], p), steps=steps)
    return metrics


def acc(model, x, y, classes=None):
    pred = predict(model, x)
    mask = np.ones(len(y), bool) if classes is None else np.isin(y.numpy(), classes)
    return float((pred[mask] == y.numpy()[mask]).mean())


def test_registry_names():
    assert set(STRATEGIES) == {"naive", "er", "iw-er", "der++", "ewc", "mer"}
    with pytest.raises(ValueError):
        make_strategy("nope", tiny_model(2), adam)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_learns(name):
    x, y = make_data([0, 1, 2], 40, seed=1)
    xt, yt = make_data([0, 1, 2], 30, seed=2)
    model = tiny_model(3)
    s = make_strategy(name, model, adam, config=small_settings(name), capacity=30)
    before = acc(model, xt, yt)
    metrics = run_stream(s, x, y, p_select=torch.full((len(y),), 0.5))
    after = acc(model, xt, yt)
    assert after >= 0.9 > before + 0.2, (name, before, after)
    assert {"loss", "steps", "new", "replay", "memory"} <= set(metrics) and metrics["steps"] == 2
    if s.memory is not None:
        assert 0 < len(s.memory) <= 30


@pytest.mark.parametrize("name", ["iw-er", "er", "der++"])
def test_head_growth_keeps_old_classes(name):
    tmpl = templates()
    x0, y0 = make_data([0, 1], 60, seed=3, tmpl=tmpl)
    x1, y1 = make_data([2], 150, seed=4, tmpl=tmpl)
    xt, yt = make_data([0, 1, 2], 40, seed=5, tmpl=tmpl)
    model = tiny_model(2)
    s = make_strategy(name, model, adam, config={"replay_batch_size": 20}, capacity=40)
    run_stream(s, x0, y0)
    old_before = acc(model, xt, yt, [0, 1])
    assert old_before > 0.9
    run_stream(s, x1, y1)  # labels 2 grow the head inside update()
    assert model.num_classes == 3
    assert acc(model, xt, yt, [2]) > 0.8
    assert acc(model, xt, yt, [0, 1]) >= old_before - 0.15


def test_naive_forgets_without_replay():
    """The sanity check for the test above: without replay the old classes are overwritten."""
    tmpl = templates()
    x0, y0 = make_data([0, 1], 60, seed=3, tmpl=tmpl)
    x1, y1 = make_data([2], 150, seed=4, tmpl=tmpl)
    xt, yt = make_data([0, 1, 2], 40, seed=5, tmpl=tmpl)
    model = tiny_model(2)
    s = make_strategy("naive", model, adam)
    run_stream(s, x0, y0)
    run_stream(s, x1, y1)
    assert acc(model, xt, yt, [0, 1]) < 0.5


def test_growth_extends_optimizer_state():
    model = tiny_model(2)
    s = make_strategy("iw-er", model, adam, capacity=10)
    x, y = make_data([0, 1], 10, seed=0)
    s.update(LabelledBatch(x, y), steps=3)
    old = {k: v.clone() for k, v in s.optimizer.state[model.head.weight].items()}
    feat_state = s.optimizer.state[model.features[1].weight]["exp_avg"].clone()
    assert s.observe_new_classes(4)
    st = s.optimizer.state[model.head.weight]
    assert st["exp_avg"].shape == (4, 32)
    assert torch.equal(st["exp_avg"][:2], old["exp_avg"]) and not st["exp_avg"][2:].any()
    assert torch.equal(st["step"], old["step"])
    assert torch.equal(s.optimizer.state[model.features[1].weight]["exp_avg"], feat_state)
    assert not s.observe_new_classes(3)  # never shrinks
    s.update(LabelledBatch(*make_data([3], 10, seed=1)), steps=1)  # trains fine after growth


def test_iw_er_stores_capped_inverse_propensity():
    model = tiny_model(2)
    s = make_strategy("iw-er", model, adam, config={"w_max": 5.0}, capacity=10)
    x, y = make_data([0, 1], 2, seed=0)
    s.update(LabelledBatch(x, y, torch.tensor([1.0, 0.5, 0.25, 0.1])), steps=1)
    assert sorted(s.memory.state_dict()["weight"].tolist()) == pytest.approx([1.0, 2.0, 4.0, 5.0])


def test_iw_er_importance_options_run():
    for kind in ("loss", "grad"):
        model = tiny_model(2)
        s = make_strategy("iw-er", model, adam, config={"importance": kind, "class_balance": True}, capacity=10)
        x, y = make_data([0, 1], 10, seed=0)
        m = run_stream(s, x, y, steps=1, p_select=torch.full((20,), 0.5))
        assert np.isfinite(m["loss"])


def _iw_er_losses(configs, new_classes=(2, 3)):
    """iw-er's step loss under each setting in ``configs``, for one model, one memory holding classes 0 and 1,
    the same new batch (of ``new_classes``) and the same 10 replayed samples."""
    tmpl = templates()
    model = tiny_model(2)
    s = make_strategy("iw-er", model, adam, config={"replay_batch_size": 10}, capacity=40)
    run_stream(s, *make_data([0, 1], 20, seed=0, tmpl=tmpl))
    s.observe_new_classes(4)
    new = LabelledBatch(*make_data(list(new_classes), 5, seed=1, tmpl=tmpl))
    replay = s.memory.sample(10, np.random.default_rng(0), balanced=True)
    out = []
    for cfg in configs:
        s.config = s.settings(cfg)
        out.append(float(s.step_loss(new, replay).detach()))
    return out


def test_iw_er_ace_mix_blends_asymmetric_and_full_ce():
    """ace_mix = a gives a·ACE + (1 − a)·full CE on the new samples: the loss is linear in it between the two."""
    ace, full, half, none, by_replay = _iw_er_losses(
        [{"ace_mix": 1.0}, {"ace": False}, {"ace_mix": 0.5}, {"ace_mix": 0.0}, {"ace_mix": "replay"}])
    assert abs(ace - full) > 1e-3  # the two losses differ, so the blend is measurable
    assert half == pytest.approx((ace + full) / 2, rel=1e-5)
    assert none == pytest.approx(full, rel=1e-6)
    assert by_replay == pytest.approx(half, rel=1e-6)  # 10 replayed beside 10 new: a = 10 / 20
    for bad, message in ((1.5, "ace_mix: 1.5 is out of range"), ("half", "ace_mix: Invalid enum value 'half'")):
        with pytest.raises(ValueError, match=message):
            make_strategy("iw-er", tiny_model(2), adam, config={"ace_mix": bad})


def test_iw_er_ace_share_follows_the_steps_of_the_update():
    """ace_mix "steps" (the default): a = 1 − 1/(2K) for an update of K steps -- half full CE at one step per
    minibatch, nearly pure ACE at the trainer's 20 -- and the loss is that blend."""
    s = make_strategy("iw-er", tiny_model(2), adam, config={"replay_batch_size": 4})
    assert s.config.ace_mix == "steps"
    x, y = make_data([0, 1], 8, seed=0)
    new = LabelledBatch(*make_data([0], 4, seed=1))  # one class: its ACE leaves class 1's logit alone
    for k, share in ((1, 0.5), (3, 1 - 1 / 6), (20, 0.975)):
        s.update(LabelledBatch(x, y), steps=k)
        replay = s.memory.sample(4, np.random.default_rng(0))
        assert s._ace_share(len(new), replay) == pytest.approx(share)
        losses = {}
        for mix in ("steps", 1.0, 0.0):
            s.config = s.settings({"replay_batch_size": 4, "ace_mix": mix})
            losses[mix] = float(s.step_loss(new, replay).detach())
        assert abs(losses[1.0] - losses[0.0]) > 1e-3  # ACE and full CE differ, so the blend is measurable
        assert losses["steps"] == pytest.approx(share * losses[1.0] + (1 - share) * losses[0.0], rel=1e-5)
        s.config = s.settings({"replay_batch_size": 4})


def test_ewc_penalty_anchors_parameters():
    model = tiny_model(2)
    s = make_strategy("ewc", model, adam, config={"ewc_lambda": 50.0, "ewc_window": 2})
    x, y = make_data([0, 1], 10, seed=0)
    run_stream(s, x, y)
    assert s.fisher and float(s.penalty().detach()) == pytest.approx(0.0, abs=1e-8)
    with torch.no_grad():
        model.features[1].weight.add_(0.1)
    assert float(s.penalty().detach()) > 0
    s.observe_new_classes(3)
    assert s.fisher["head.weight"].shape == (3, 32)


def test_batch_from_samples_and_state_round_trip():
    x, y = make_data([0, 1], 5, seed=0)
    batch = LabelledBatch.from_samples([LabelledSample(x[i], int(y[i]), 0.5) for i in range(len(y))])
    assert batch.p_select.tolist() == [0.5] * 10 and batch.importance is None
    model = tiny_model(2)
    s = make_strategy("der++", model, adam, capacity=10, seed=1)
    s.update(batch, steps=2)
    state = s.state_dict()
    m2 = tiny_model(2, seed=9)
    s2 = make_strategy("der++", m2, adam, memory=ReplayMemory(10, store_logits=True), seed=1)
    s2.load_state_dict(state)
    assert len(s2.memory) == len(s.memory)
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    s.update(batch, steps=1)
    s2.update(batch, steps=1)
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_rehearse_trains_on_memory_only(name):
    """Replay-only steps: memory-based strategies learn from their memory alone; the memory is unchanged;
    strategies without memory (or with an empty one) do nothing."""
    x, y = make_data([0, 1, 2], 20, seed=1)
    xt, yt = make_data([0, 1, 2], 30, seed=2)
    model = tiny_model(3)
    s = make_strategy(name, model, adam, config=small_settings(name), capacity=60)
    assert s.rehearse(3)["steps"] == 0  # nothing remembered yet
    if s.memory is None:
        assert s.rehearse(3)["steps"] == 0
        return
    s.remember(LabelledBatch(x, y))  # fill the memory without training
    n_mem, before, steps0 = len(s.memory), acc(model, xt, yt), s.steps
    out = s.rehearse(40)
    assert out["steps"] == 40 and np.isfinite(out["loss"]) and s.steps == steps0 + 40
    assert len(s.memory) == n_mem
    assert acc(model, xt, yt) >= 0.9 > before + 0.2, (name, before)


def test_mer_with_one_batch_and_beta_one_is_iw_er():
    """MER's Reptile step around one inner batch with beta = 1 is exactly iw-er (same draws, same weights); with
    its defaults (2 batches, beta 0.5) the weights end elsewhere."""
    x, y = make_data([0, 1, 2], 30, seed=7)
    out = {}
    for name, cfg in (("iw-er", {}), ("mer", {"batches": 1, "beta": 1.0}), ("mer", {})):
        model = tiny_model(3, seed=1)
        s = make_strategy(name, model, adam, config={"replay_batch_size": 10, **cfg}, capacity=30, seed=3)
        run_stream(s, x, y)
        out[(name, str(cfg))] = torch.cat([p.detach().flatten() for p in model.parameters()])
    iw, mer1, mer = out.values()
    assert torch.allclose(iw, mer1)
    assert not torch.allclose(iw, mer)


def test_mer_settings_are_its_own_and_checked():
    from trainer.strategies import strategy_settings

    cfg = strategy_settings("mer", {"batches": 3, "beta": 0.3, "distill": 0.0})
    assert (cfg.batches, cfg.beta, cfg.distill, cfg.ace) == (3, 0.3, 0.0, True)  # iw-er's settings are its too
    for bad in ({"batches": 0}, {"beta": 0.0}, {"beta": 1.5}, {"mer_beta": 0.5}):
        with pytest.raises(ValueError):
            strategy_settings("mer", bad)


def bn_model(num_classes: int, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    feats = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                          nn.Flatten(1))
    return Classifier(feats, 4, num_classes)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_the_running_statistics_the_exported_model_uses(freeze):
    """With freeze_bn an update optimises the function that ships (running statistics), and only that: the
    statistics stay, the affine parameters and the rest learn; without it the statistics follow the batches."""
    model = bn_model(2)
    bn = model.features[1]
    bn.running_mean.fill_(0.3)
    bn.running_var.fill_(2.0)
    mean0, var0, gamma0 = bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone()
    s = make_strategy("iw-er", model, adam, capacity=50, config={"freeze_bn": freeze, "replay_batch_size": 10})
    x, y = make_data([0, 1], 10, seed=0)
    s.update(LabelledBatch(x, y), steps=3)
    s.rehearse(steps=2)
    assert not torch.equal(bn.weight.detach(), gamma0)  # the affine part learns either way
    assert torch.equal(bn.running_mean, mean0) == freeze and torch.equal(bn.running_var, var0) == freeze
    assert model.training  # the strategy leaves the model in training mode ...
    assert bn.training != freeze  # ... and its batch norms in inference mode when frozen


@pytest.mark.parametrize("name", ["iw-er", "der++", "er"])
def test_augment_dihedral_trains_on_turned_copies_and_leaves_the_stored_ones(name):
    """strategy.augment: every step's new and replayed inputs are one of the eight symmetries of the originals;
    what the memory keeps is the original; "none" (the default) hands the step its inputs unchanged."""
    x, y = make_data([0, 1], 10, seed=0)
    seen: list[torch.Tensor] = []
    for augment in ("none", "dihedral"):
        s = make_strategy(name, tiny_model(2), adam, capacity=50, config={"augment": augment, **small_settings(name)})
        step_loss = s.step_loss

        def spy(new, replay, step_loss=step_loss):
            seen.append(new.x.clone())
            return step_loss(new, replay)

        s.step_loss = spy
        seen.clear()
        s.update(LabelledBatch(x, y), steps=6)
        if augment == "none":
            assert all(torch.equal(v, x) for v in seen)
            continue
        changed = 0
        for v in seen:
            for i in range(len(x)):
                syms = [torch.rot90(x[i], k, dims=(1, 2)) for k in range(4)]
                syms += [torch.flip(t, dims=(2,)) for t in syms]
                assert any(torch.equal(v[i], t) for t in syms)
                changed += not torch.equal(v[i], x[i])
        assert changed > len(seen) * len(x) // 2  # 7 of 8 symmetries change an asymmetric input
        if s.memory is not None:
            kept = s.memory.sample(len(s.memory), np.random.default_rng(0)).x
            # the originals, as the memory stores them (quantised to k/255)
            assert all(any(torch.allclose(k, xi, atol=1 / 255) for xi in x) for k in kept)


def test_augment_from_new_class_waits_for_the_loop_to_add_a_class():
    """strategy.augment_from "new-class": steps see their inputs unchanged until the head grows, turned copies
    after; whether it grew is kept in the strategy's state."""
    seen: list[torch.Tensor] = []
    s = make_strategy("iw-er", tiny_model(2), adam, capacity=50,
                      config={"augment": "dihedral", "augment_from": "new-class"})
    step_loss = s.step_loss

    def spy(new, replay):
        seen.append(new.x.clone())
        return step_loss(new, replay)

    s.step_loss = spy
    x, y = make_data([0, 1], 10, seed=0)
    s.update(LabelledBatch(x, y), steps=4)
    assert not s.grown and len(seen) == 4 and all(torch.equal(v, x) for v in seen)
    assert s.state_dict()["grown"] is False
    assert s.observe_new_classes(3) and s.grown
    seen.clear()
    x3, y3 = make_data([0, 1, 2], 10, seed=1)
    s.update(LabelledBatch(x3, y3), steps=4)
    assert sum(not torch.equal(v, x3) for v in seen) >= 3  # a step leaves all 30 inputs as they were 1 in 8^30
    again = make_strategy("iw-er", tiny_model(3), adam, capacity=50,
                          config={"augment": "dihedral", "augment_from": "new-class"})
    again.load_state_dict(s.state_dict())
    assert again.grown
    old = {k: v for k, v in s.state_dict().items() if k != "grown"}  # a checkpoint from before the flag
    fresh = make_strategy("iw-er", tiny_model(3), adam, capacity=50, config={"augment": "dihedral"})
    fresh.load_state_dict(old)
    assert not fresh.grown


def test_augment_names_the_key_when_unknown():
    with pytest.raises(ValueError, match="augment"):
        make_strategy("iw-er", tiny_model(2), adam, config={"augment": "mirror"})
    from trainer.augment import AUGMENTS
    from trainer.strategies import StrategyConfig
    import typing

    allowed = typing.get_args(typing.get_type_hints(StrategyConfig)["augment"])
    assert set(allowed) == set(AUGMENTS)  # the setting offers exactly what trainer.augment knows


def test_ema_candidate_is_the_moving_average_of_the_weights_and_survives_growth_and_a_checkpoint():
    """strategy.ema: the candidate is the average of the weights over optimiser steps, exactly (decay 0.5, two
    steps: the mean of the two); it grows with the head (new rows start as the model's), is restored from the
    strategy's state, and training goes on from the weights, not the average."""
    x, y = make_data([0, 1], 10, seed=0)
    model = tiny_model(2)
    s = make_strategy("iw-er", model, adam, config={"replay_batch_size": 4, "ema": 0.5}, capacity=20, seed=1)
    assert s.candidate() is model  # no step yet: the weights themselves
    s.update(LabelledBatch(x, y), steps=1)
    w1 = [p.detach().clone() for p in model.parameters()]
    s.update(LabelledBatch(x, y), steps=1)
    cand = s.candidate()
    assert cand is not model and not cand.training
    for e, a, b in zip(cand.parameters(), w1, model.parameters()):
        assert torch.allclose(e, (a + b) / 2, atol=1e-7)
    assert not all(torch.equal(e, b) for e, b in zip(cand.parameters(), model.parameters()))
    x2, y2 = make_data([2], 6, seed=3)
    s.update(LabelledBatch(x2, y2), steps=1)  # label 2 grows both heads
    assert model.num_classes == 3 and s.candidate().num_classes == 3
    m2 = tiny_model(2, seed=9)
    s2 = make_strategy("iw-er", m2, adam, config={"replay_batch_size": 4, "ema": 0.5}, capacity=20, seed=1)
    s2.load_state_dict(s.state_dict())
    for a, b in zip(s.candidate().parameters(), s2.candidate().parameters()):
        assert torch.equal(a, b)
    off = make_strategy("iw-er", tiny_model(2), adam, config={"replay_batch_size": 4}, capacity=20)
    off.update(LabelledBatch(x, y), steps=2)
    assert off.candidate() is off.model and off.state_dict()["ema"] is None


def test_tta_candidate_answers_the_mean_of_the_eight_views_while_they_are_learnt():
    """strategy.tta: the candidate is the model asked all eight turns and mirror images (the same answer for
    every view of an input, the softmax the mean of the views'); with augment_from new-class only once the head
    grew; the weights the strategy trains are untouched; without a dihedral augment the setting is refused."""
    from trainer.nets import DihedralMean

    x, y = make_data([0, 1], 6, seed=0)
    s = make_strategy("iw-er", tiny_model(2), adam, capacity=20,
                      config={"augment": "dihedral", "augment_from": "new-class", "tta": True})
    assert s.candidate() is s.model  # nothing turned yet: the model asked as it learns
    s.observe_new_classes(3)
    cand = s.candidate()
    assert isinstance(cand, DihedralMean) and cand.model is s.model and cand.num_classes == 3
    cand.eval()
    with torch.no_grad():
        views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
        views += [torch.flip(v, dims=(3,)) for v in views]
        mean = torch.stack([s.model(v).softmax(1) for v in views]).mean(0)
        for v in views:
            assert torch.allclose(cand(v).softmax(1), mean, atol=1e-5)
    always = make_strategy("iw-er", tiny_model(2), adam, capacity=20, config={"augment": "all", "tta": True})
    assert isinstance(always.candidate(), DihedralMean)
    for augment in ("none", "both"):
        with pytest.raises(ValueError, match="tta"):
            make_strategy("iw-er", tiny_model(2), adam, config={"augment": augment, "tta": True})


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_tta_candidate_exports_to_one_onnx_graph_the_edge_runs(tmp_path, exporter):
    """The eight views are inside the exported graph: onnxruntime answers as the torch candidate does, and a
    turned input gets the same answer as the original."""
    from edge.model import EdgeModel
    from protocol.model_meta import ModelMeta
    from trainer.export import export_onnx
    from trainer.nets import DihedralMean, build_model

    net = DihedralMean(build_model("small_cnn", 3)).eval()
    x = torch.rand(4, 3, 64, 64)
    meta = ModelMeta(version="v0002", labels=["a", "b", "c"], width=64, height=64, architecture="small_cnn")
    path = tmp_path / "v0002.onnx"
    export_onnx(net, meta, path, exporter=exporter, verify_inputs=x)
    session = EdgeModel.load(path, threads=1).session
    name = session.get_inputs()[0].name
    out = session.run(None, {name: x.numpy()})[0]
    turned = session.run(None, {name: torch.rot90(x, 1, dims=(2, 3)).contiguous().numpy()})[0]
    with torch.no_grad():
        assert np.allclose(out, net(x).numpy(), atol=1e-4)
    assert np.allclose(out, turned, atol=1e-4)


def test_ema_new_rows_start_as_the_models():
    x, y = make_data([0, 1], 10, seed=0)
    model = tiny_model(2)
    s = make_strategy("iw-er", model, adam, config={"replay_batch_size": 4, "ema": 0.9}, capacity=20)
    s.update(LabelledBatch(x, y), steps=2)
    s.observe_new_classes(3)
    assert torch.equal(s.candidate().head.weight[2], model.head.weight[2])
    assert torch.equal(s.candidate().head.bias[2], model.head.bias[2])
    with pytest.raises(ValueError, match="ema"):
        make_strategy("iw-er", tiny_model(2), adam, config={"ema": 1.0})


@pytest.mark.parametrize("name", ["iw-er", "der++", "mer"])
def test_frozen_blocks_keep_their_weights_and_the_rest_learns_through_growth_and_a_checkpoint(name):
    """frozen_blocks N: an update, a rehearsal and a grown head leave the first N modules of ``features`` exactly
    as they were, while the later ones and the head learn; a checkpoint written without the setting loads."""
    model = tiny_model(2)
    plain = make_strategy(name, tiny_model(2, seed=1), adam, capacity=50, config={"replay_batch_size": 10})
    s = make_strategy(name, model, adam, capacity=50, config={"replay_batch_size": 10, "frozen_blocks": 2})
    s.load_state_dict(plain.state_dict())  # same parameters, same optimiser shape: loads whatever the setting
    head0 = model.head.weight.detach().clone()
    frozen = [p.detach().clone() for p in model.features[1].parameters()]  # Flatten has none: module 1 is the Linear
    x, y = make_data([0, 1, 2], 10, seed=0)
    s.update(LabelledBatch(x, y), steps=3)  # label 2 grows the head
    s.rehearse(steps=2)
    assert model.num_classes == 3 and not torch.equal(model.head.weight[:2].detach(), head0)
    assert all(torch.equal(p.detach(), f) for p, f in zip(model.features[1].parameters(), frozen))
    assert all(p.grad is None for p in model.features[1].parameters())


def test_frozen_blocks_refuses_to_freeze_the_whole_net_naming_the_key():
    with pytest.raises(ValueError, match=r"frozen_blocks: 3 would freeze every module of the net's features \(3\)"):
        make_strategy("iw-er", tiny_model(2), adam, capacity=50, config={"frozen_blocks": 3})
    with pytest.raises(ValueError, match="frozen_blocks"):
        make_strategy("iw-er", tiny_model(2), adam, capacity=50, config={"frozen_blocks": -1})
