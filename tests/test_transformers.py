"""popbt.transformers: a Hugging Face Trainer recipe trained by popbt workers, offline.

One real run of the example through the command line (exploits, checkpoints, quiet logs,
nothing left in the working directory), and the adapter's functions called in the order a
worker calls them.
"""

import math
import os

import pytest

from conftest import ROOT, require, run_popbt

require("transformers")
require("accelerate")  # the Trainer needs it

import torch  # noqa: E402

import popbt  # noqa: E402
from popbt import SpecError  # noqa: E402
from popbt.examples import hf_text_classification as hf  # noqa: E402
from popbt.history import read  # noqa: E402
from popbt.torch import load_weights  # noqa: E402
from popbt.transformers import TransformersSpec, device_arguments  # noqa: E402
from torch_helpers import replay_with_one_thread  # noqa: E402

EXAMPLE = str(ROOT / "examples" / "hf_text_classification.py")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def linear_factor(step: int, total: int, warmup: float) -> float:
    """transformers' linear schedule with warmup (a fraction of ``total`` when below 1)."""
    warmup_steps = int(warmup) if warmup >= 1 else math.ceil(total * warmup)
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total - step) / max(1, total - warmup_steps))


def test_example_run_exploits_and_the_copy_trains_on_with_its_explored_hyperparameters(tmp_path):
    cwd, runs = tmp_path / "cwd", tmp_path / "runs"
    cwd.mkdir()
    args = ["--population", "4", "--intervals", "2", "--workers", "2", "--sync", "--seed", "1"]
    out = run_popbt("run", EXAMPLE, *args, "--dir", str(runs), cwd=cwd, env=OFFLINE)
    assert out.returncode == 0, out.stderr
    assert os.listdir(cwd) == []  # no trainer_output/, runs/ or wandb/ here

    history = read(dir=runs)
    rows = {(r.member, r.interval): r for r in history.rows}
    exploit = next(e for e in history.exploits if e.interval == 1)
    donor, explored = rows[(exploit.donor, 0)].hparams, exploit.hparams_after
    assert all(explored[name] != donor[name] for name in ("learning_rate", "weight_decay", "warmup_steps"))

    checkpoint = torch.load(rows[(exploit.member, 1)].checkpoint, weights_only=True)
    decay, no_decay = checkpoint["optimizer"]["param_groups"]
    schedule, lr = checkpoint["scheduler"], explored["learning_rate"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (explored["weight_decay"], 0.0)
    assert decay["initial_lr"] == no_decay["initial_lr"] == lr and schedule["base_lrs"] == [lr, lr]
    # the copy went on from the donor's step 30, along the schedule with the explored warmup
    assert checkpoint["step"] == schedule["last_epoch"] == 60 and checkpoint["hparams"] == explored
    total = hf.intervals * hf.spec.steps  # the spec's planned run
    assert decay["lr"] == pytest.approx(lr * linear_factor(60, total, explored["warmup_steps"]))

    # popbt replay trains the copy's schedule on in memory, with no checkpoint: the same model
    replayed = replay_with_one_thread(EXAMPLE, exploit.member, runs)
    assert replayed.score == pytest.approx(replayed.original, abs=1e-6)

    best = popbt.best(dir=runs)
    model = load_weights(hf.make_model(best["schedule"][-1]["hparams"]), best["weights"])
    evaluation = hf.splits()[1]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=evaluation.input_ids, attention_mask=evaluation.attention_mask).logits
    assert (logits.argmax(1) == evaluation.labels).float().mean().item() == pytest.approx(best["score"], abs=1e-6)

    logs = [
        line for log in (runs / "logs" / history.experiment.name).iterdir() for line in log.read_text().splitlines()
    ]
    assert logs and all(line.split()[2].startswith("popbt") for line in logs), logs  # no Trainer chatter


# -- the adapter's functions, called as a worker calls them ----------------------------

SPEC = TransformersSpec(
    hf.make_model,
    train_dataset=lambda: hf.splits()[0],
    eval_dataset=lambda: hf.splits()[1],
    compute_metrics=hf.accuracy,
    steps=3,
    metric="eval_accuracy",
    args={"per_device_train_batch_size": 16, "per_device_eval_batch_size": 500},
    intervals=4,
)
FIRST = {"learning_rate": 1e-3, "weight_decay": 0.1, "warmup_steps": 0.5, "hidden_dropout_prob": 0.1}
EXPLORED = {"learning_rate": 3e-3, "weight_decay": 0.01, "warmup_steps": 0.0, "hidden_dropout_prob": 0.2}


def assert_continued_with_explored_settings(state, steps: int) -> None:
    optimizer, scheduler = state.trainer.optimizer, state.trainer.lr_scheduler
    lr = EXPLORED["learning_rate"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [EXPLORED["weight_decay"], 0.0]
    assert [g["initial_lr"] for g in optimizer.param_groups] == scheduler.base_lrs == [lr, lr]
    assert scheduler.last_epoch == state.step == steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * linear_factor(steps, 4 * 3, 0.0))
    assert all(s["step"].item() == steps for s in optimizer.state.values())  # AdamW's moments went on


def test_a_copy_in_a_new_process_continues_the_donor_with_the_explored_hyperparameters(tmp_path):
    state = SPEC.build(FIRST, "cpu")
    assert SPEC.train(state, FIRST, 0, "cpu")["step"] == 3
    assert 0 <= SPEC.evaluate(state, "cpu")["eval_accuracy"] <= 1
    SPEC.save(state, str(tmp_path / "donor.ckpt"))

    copy = SPEC.build(EXPLORED, "cpu")  # a new worker: build, load, apply, train, evaluate, save
    SPEC.load(copy, str(tmp_path / "donor.ckpt"))
    SPEC.apply(copy, EXPLORED)
    SPEC.train(copy, EXPLORED, 1, "cpu")
    assert_continued_with_explored_settings(copy, 6)
    assert copy.model.config.hidden_dropout_prob == 0.2  # hyperparameters reach the model too
    metrics = SPEC.evaluate(copy, "cpu")
    assert "eval_loss" in metrics and not any(name.endswith("_runtime") for name in metrics)
    SPEC.save(copy, str(tmp_path / "copy.ckpt"))

    checkpoint = torch.load(tmp_path / "copy.ckpt", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "scheduler", "step", "hparams"} and checkpoint["step"] == 6


def test_training_on_in_memory_as_replay_does_continues_too():
    state = SPEC.build(FIRST, "cpu")
    SPEC.train(state, FIRST, 0, "cpu")
    SPEC.apply(state, EXPLORED)  # replay: no checkpoint in between
    assert state.model.config.hidden_dropout_prob == 0.2  # the model was rebuilt, with its weights
    SPEC.train(state, EXPLORED, 1, "cpu")
    assert_continued_with_explored_settings(state, 6)


def test_evaluate_names_the_missing_metric():
    spec = TransformersSpec(
        hf.make_model, train_dataset=hf.splits()[0], eval_dataset=hf.splits()[1], steps=1, metric="eval_f1", mode="max"
    )
    with pytest.raises(ValueError, match="no 'eval_f1'.*eval_loss.*compute_metrics"):
        spec.evaluate(spec.build(FIRST, "cpu"), "cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "positive integer"),
        ({"steps": 5, "args": {"num_train_epochs": 3}}, "popbt sets 'num_train_epochs'"),
        ({"steps": 5, "args": {"output_dir": "out"}}, "private temporary directory"),
        ({"steps": 5, "args": {"learning_rat": 0.1}}, "TrainingArguments has no 'learning_rat'"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(SpecError, match=message):
        TransformersSpec(hf.make_model, train_dataset=None, eval_dataset=None, **kwargs)


def test_the_default_score_is_the_eval_loss_minimised():
    spec = TransformersSpec(hf.make_model, train_dataset=None, eval_dataset=None, steps=1)
    assert (spec.metric, spec.mode) == ("eval_loss", "min")


def test_devices_map_to_training_arguments():
    assert device_arguments("cpu") == {"use_cpu": True}
    assert device_arguments("cuda:1") == {"popbt_device": "cuda:1"}
    arguments = SPEC.arguments(EXPLORED, "cpu", "/nonexistent")
    assert arguments.device == torch.device("cpu") and arguments.learning_rate == EXPLORED["learning_rate"]
    assert arguments.report_to in ([], "none", ["none"]) and arguments.max_steps == 3
