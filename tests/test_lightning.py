"""popbt.lightning: a LightningModule trained by popbt workers, interval after interval.

One real run of the example through the command line (exploits, checkpoints, quiet logs),
and the adapter's functions called in the order a worker calls them, on a small module.
"""

import math
import os

import pytest

from conftest import ROOT, require, run_popbt

require("lightning")

import torch  # noqa: E402
from lightning.pytorch import LightningModule  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import popbt  # noqa: E402
from popbt import SpecError  # noqa: E402
from popbt.examples import digits, lightning_digits  # noqa: E402
from popbt.history import read  # noqa: E402
from popbt.lightning import LightningSpec, trainer_device  # noqa: E402
from popbt.torch import load_weights  # noqa: E402
from torch_helpers import replay_with_one_thread  # noqa: E402

EXAMPLE = str(ROOT / "examples" / "lightning_digits.py")
STEPS_PER_EPOCH = math.ceil(len(digits.dataset()["train_y"]) / digits.BATCH_SIZE)


def test_example_run_exploits_and_the_copy_trains_on_with_its_explored_hyperparameters(tmp_path):
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    args = ["--population", "4", "--intervals", "2", "--workers", "2", "--sync", "--seed", "3"]
    out = run_popbt("run", EXAMPLE, *args, "--dir", str(runs), cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert os.listdir(cwd) == []  # no lightning_logs/, checkpoints/ or anything else here

    history = read(dir=runs)
    rows = {(r.member, r.interval): r for r in history.rows}
    exploit = next(e for e in history.exploits if e.interval == 1)
    donor_hparams = rows[(exploit.donor, 0)].hparams
    explored = exploit.hparams_after
    assert explored["lr"] != donor_hparams["lr"] and explored["momentum"] != donor_hparams["momentum"]

    checkpoint = torch.load(rows[(exploit.member, 1)].checkpoint, weights_only=True)
    (group,) = checkpoint["optimizer_states"][0]["param_groups"]
    (schedule,) = checkpoint["lr_schedulers"]
    assert group["momentum"] == explored["momentum"] and group["weight_decay"] == explored["weight_decay"]
    assert group["initial_lr"] == explored["lr"] and schedule["base_lrs"] == [explored["lr"]]
    # the copy went on from the donor's step: two epochs in all, along the schedule at the new base
    assert checkpoint["global_step"] == schedule["last_epoch"] == 2 * STEPS_PER_EPOCH
    total = lightning_digits.intervals * STEPS_PER_EPOCH  # the spec's planned run
    assert group["lr"] == pytest.approx(explored["lr"] * lightning_digits.cosine(2 * STEPS_PER_EPOCH, total))

    # popbt replay trains the copy's schedule on in memory, with no checkpoint: the same model
    replayed = replay_with_one_thread(EXAMPLE, exploit.member, runs)
    assert replayed.score == pytest.approx(replayed.original, abs=1e-6)

    best = popbt.best(dir=runs)
    model = lightning_digits.DigitsMLP(**best["schedule"][-1]["hparams"])
    load_weights(model, best["weights"])  # weights_only=True, the "model" key
    data = digits.dataset()
    with torch.no_grad():
        accuracy = (model(data["val_x"]).argmax(1) == data["val_y"]).float().mean().item()
    assert accuracy == pytest.approx(best["score"], abs=1e-6)

    logs = [
        line for log in (runs / "logs" / history.experiment.name).iterdir() for line in log.read_text().splitlines()
    ]
    assert logs and all(line.split()[2].startswith("popbt") for line in logs), logs  # no Lightning chatter


# -- the adapter's functions, called as a worker calls them ----------------------------


class TwoGroups(LightningModule):
    """AdamW with a body and a 10x head learning rate, linear warmup: settings a copy must rebuild."""

    def __init__(self, lr: float, weight_decay: float, warmup: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body, self.head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        hp = self.hparams
        groups = [{"params": self.body.parameters()}, {"params": self.head.parameters(), "lr": hp.lr * 10}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / hp.warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def train_dataloader(self):
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8, shuffle=True)

    def val_dataloader(self):
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32)


SPEC = LightningSpec(TwoGroups, metric="val_accuracy", steps=5, intervals=4)
FIRST = {"lr": 0.01, "weight_decay": 0.1, "warmup": 20}
EXPLORED = {"lr": 0.03, "weight_decay": 0.02, "warmup": 2}


def first_interval(path) -> None:
    state = SPEC.build(FIRST, "cpu")
    SPEC.train(state, FIRST, 0, "cpu")
    assert 0 <= SPEC.evaluate(state, "cpu")["val_accuracy"] <= 1
    SPEC.save(state, str(path))


def assert_continued_with_explored_settings(trainer, steps: int) -> None:
    (optimizer,), (config,) = trainer.optimizers, trainer.lr_scheduler_configs
    lr = EXPLORED["lr"]
    assert [g["initial_lr"] for g in optimizer.param_groups] == config.scheduler.base_lrs == [lr, 10 * lr]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr, 10 * lr])  # the new warmup is over
    assert all(g["weight_decay"] == EXPLORED["weight_decay"] for g in optimizer.param_groups)
    assert trainer.global_step == config.scheduler.last_epoch == steps
    assert all(s["step"].item() == steps for s in optimizer.state.values())  # Adam's moments went on


def test_a_copy_in_a_new_process_continues_the_donor_with_the_explored_hyperparameters(tmp_path):
    first_interval(tmp_path / "donor.ckpt")

    state = SPEC.build(EXPLORED, "cpu")  # a new worker: build, load, apply, train, evaluate, save
    SPEC.load(state, str(tmp_path / "donor.ckpt"))
    SPEC.apply(state, EXPLORED)
    SPEC.train(state, EXPLORED, 1, "cpu")
    assert_continued_with_explored_settings(state.trainer, 10)
    assert "val_accuracy" in SPEC.evaluate(state, "cpu")
    SPEC.save(state, str(tmp_path / "copy.ckpt"))

    checkpoint = torch.load(tmp_path / "copy.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10 and checkpoint["hyper_parameters"] == EXPLORED
    assert checkpoint["model"].keys() == checkpoint["state_dict"].keys() == state.module.state_dict().keys()
    assert os.listdir(state.scratch) == []  # the private copy of the donor's checkpoint is gone


def test_training_on_in_memory_as_replay_does_continues_too():
    state = SPEC.build(FIRST, "cpu")
    SPEC.train(state, FIRST, 0, "cpu")
    SPEC.apply(state, EXPLORED)  # replay: no checkpoint in between
    SPEC.train(state, EXPLORED, 1, "cpu")
    assert_continued_with_explored_settings(state.trainer, 10)


def test_evaluate_names_the_missing_metric():
    spec = LightningSpec(TwoGroups, metric="val_loss", steps=2)
    state = spec.build(FIRST, "cpu")
    spec.train(state, FIRST, 0, "cpu")
    with pytest.raises(ValueError, match="logged no 'val_loss'.*val_accuracy"):
        spec.evaluate(state, "cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 5, "epochs": 1}, "steps=N or epochs=N"),
        ({}, "steps=N or epochs=N"),
        ({"steps": 0}, "positive integer"),
        ({"steps": 5, "trainer": {"max_epochs": 3}}, "popbt sets 'max_epochs'"),
        ({"steps": 5, "trainer": {"devices": 2}}, "--devices"),
        ({"steps": 5, "populaton": 4}, "unknown spec setting 'populaton'"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(SpecError, match=message):
        LightningSpec(TwoGroups, metric="val_accuracy", **kwargs)


def test_a_spec_object_carries_its_defaults_for_popbt():
    expected = {"population": 8, "intervals": 8, "metric": "val_accuracy", "mode": "max"}
    for ref in (f"{EXAMPLE}:spec", EXAMPLE):  # the object itself, and its functions at module level
        spec = popbt.load_spec(ref)
        assert spec.defaults == expected and set(spec.space) == {"lr", "momentum", "weight_decay"}
        assert isinstance(spec.build.__self__, LightningSpec)


def test_devices_map_to_trainer_keywords():
    assert trainer_device("cpu") == {"accelerator": "cpu", "devices": 1}
    assert trainer_device("cuda:1") == {"accelerator": "cuda", "devices": [1]}
    assert trainer_device("cuda") == {"accelerator": "cuda", "devices": 1}
