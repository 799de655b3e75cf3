"""The demo's example end to end: PBT on digits, and its weights load with weights_only=True."""

import json

import torch

from conftest import run_popbt
from popbt.examples import digits


def test_digits_run_gives_weights_that_load_into_the_example_model(tmp_path):
    out = run_popbt(
        "run",
        "popbt.examples.digits",
        "--population",
        "4",
        "--intervals",
        "3",
        "--workers",
        "2",
        "--seed",
        "0",
        "--dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    best = json.loads(run_popbt("best", "--json", "--dir", str(tmp_path)).stdout)
    assert best["experiment"] == "digits" and 0.8 < best["score"] <= 1.0
    assert {"lr", "momentum", "weight_decay"} == set(best["schedule"][-1]["hparams"])
    model = digits.make_model(best["schedule"][-1]["hparams"])
    model.load_state_dict(torch.load(best["weights"], weights_only=True)["model"])
    x, y = digits.dataset()["val_x"], digits.dataset()["val_y"]
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert abs(accuracy - best["score"]) < 1e-6  # the file holds exactly the scored model


def test_the_core_imports_without_torch_or_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, popbt, popbt.cli, popbt.launch, popbt.store, popbt.adapter; "
        "assert not {'torch', 'matplotlib', 'lightning', 'transformers'} & set(sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
