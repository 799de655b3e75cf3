"""popbt.torch: build applies hparams, checkpoints are plain weights-only dicts, and
apply after load changes optimizer settings without losing the optimizer's running state."""

import torch
from torch import nn

from popbt.torch import State, load_weights, model_and_optimizer


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
