"""popbt.torch: build applies hparams, checkpoints are plain weights-only dicts, and
apply after load changes optimizer settings without losing the optimizer's running state;
the adapters' reapply_settings makes a fresh build's settings win over a checkpoint's."""

import functools

import pytest
import torch
from torch import nn

from popbt.torch import State, load_weights, model_and_optimizer, optimizer_settings, reapply_settings


def make_model(hparams):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def make_optimizer(params, hparams):
    return torch.optim.SGD(params, lr=hparams["lr"], momentum=hparams["momentum"])


build, save, load, apply = model_and_optimizer(make_model, make_optimizer)
HPARAMS = {"lr": 0.1, "momentum": 0.9, "batch_size": 16}


def train_step(state: State) -> None:
    torch.manual_seed(0)
    loss = state.model(torch.randn(5, 4)).pow(2).mean()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()


def momentum_buffers(state: State) -> list[torch.Tensor]:
    return [state.optimizer.state[p]["momentum_buffer"] for p in state.model.parameters()]


def test_build_on_cpu_applies_hparams():
    state = build(HPARAMS, "cpu")
    assert isinstance(state, State)
    assert all(p.device == torch.device("cpu") for p in state.model.parameters())
    group = state.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"]) == (0.1, 0.9)


def test_apply_after_load_changes_settings_but_keeps_momentum(tmp_path):
    trained = build(HPARAMS, "cpu")
    train_step(trained)
    save(trained, tmp_path / "ckpt")

    explored = {"lr": 0.02, "momentum": 0.5, "batch_size": 32}
    state = load(build(explored, "cpu"), tmp_path / "ckpt")
    assert state.optimizer.param_groups[0]["lr"] == 0.1  # the checkpoint carries old values
    apply(state, explored)

    for group in state.optimizer.param_groups:
        assert (group["lr"], group["momentum"]) == (0.02, 0.5)
        assert "batch_size" not in group  # not an optimizer setting: left to user code
    for loaded, original in zip(momentum_buffers(state), momentum_buffers(trained)):
        assert torch.equal(loaded, original)


def test_checkpoint_is_weights_only_and_load_weights_restores_model(tmp_path):
    state = build(HPARAMS, "cpu")
    train_step(state)
    save(state, tmp_path / "ckpt")

    checkpoint = torch.load(tmp_path / "ckpt", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer"}

    fresh = load_weights(make_model({}), tmp_path / "ckpt")
    for got, want in zip(fresh.parameters(), state.model.parameters()):
        assert torch.equal(got, want)


# -- reapply_settings: a fresh build's settings win over a loaded checkpoint's -------


def trained_sgd(lr: float, momentum: float, schedule, steps: int = 3):
    """An SGD optimizer and scheduler after ``steps`` steps, as a checkpoint would hold them."""
    torch.manual_seed(0)
    model = make_model({})
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    scheduler = schedule(optimizer)
    for _ in range(steps):
        train_step(State(model, optimizer))
        scheduler.step()
    return model, optimizer, scheduler


def test_reapply_settings_gives_explored_values_and_keeps_state_and_schedule_position():
    def warmup(steps):
        return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / steps))

    model, old_optimizer, old_scheduler = trained_sgd(0.1, 0.9, warmup(10))
    # the next interval builds both again from the explored hyperparameters (a shorter warmup) ...
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5, weight_decay=1e-3)
    scheduler = warmup(4)(optimizer)
    fresh = optimizer_settings(optimizer)
    # ... and loads the checkpoint's running state, which brings the old settings back with it
    optimizer.load_state_dict(old_optimizer.state_dict())
    scheduler.load_state_dict(old_scheduler.state_dict())
    assert optimizer.param_groups[0]["momentum"] == 0.9 and scheduler.base_lrs == [0.1]

    reapply_settings(optimizer, fresh, [scheduler])

    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["initial_lr"]) == (0.5, 1e-3, 0.3)
    assert scheduler.base_lrs == [0.3] and scheduler.last_epoch == 3  # the schedule goes on from step 3
    assert group["lr"] == pytest.approx(0.3 * 1.0) and scheduler.get_last_lr() == [group["lr"]]  # new warmup: done
    for p, buffer in zip(model.parameters(), (old_optimizer.state[p]["momentum_buffer"] for p in model.parameters())):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], buffer)


def test_reapply_settings_rescales_a_recursive_schedule_to_the_new_base():
    step_lr = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.1)
    model, old_optimizer, old_scheduler = trained_sgd(0.1, 0.0, step_lr)
    assert old_optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # one decay by step 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scheduler = step_lr(optimizer)
    fresh = optimizer_settings(optimizer)
    optimizer.load_state_dict(old_optimizer.state_dict())
    scheduler.load_state_dict(old_scheduler.state_dict())

    reapply_settings(optimizer, fresh, [scheduler])

    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02) and scheduler.base_lrs == [0.2]
    optimizer.step()
    scheduler.step()  # step 4: the second decay, from the new base
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002)


def test_reapply_settings_keeps_each_group_s_own_settings_without_a_scheduler():
    model = make_model({})
    body, head = list(model[0].parameters()), list(model[2].parameters())
    old = torch.optim.AdamW([{"params": body, "lr": 0.1}, {"params": head, "lr": 1.0, "weight_decay": 0.0}])
    loss = model(torch.randn(3, 4)).sum()
    loss.backward()
    old.step()
    optimizer = torch.optim.AdamW([{"params": body, "lr": 0.02}, {"params": head, "lr": 0.2, "weight_decay": 0.0}])
    fresh = optimizer_settings(optimizer)
    optimizer.load_state_dict(old.state_dict())

    reapply_settings(optimizer, fresh)

    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 0.2]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]  # no decay stays no decay
    assert all(optimizer.state[p]["step"].item() == 1 for p in model.parameters())  # Adam's state kept
    with pytest.raises(ValueError, match="param groups"):
        reapply_settings(optimizer, fresh[:1])
