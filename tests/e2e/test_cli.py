"""The CLI as a user runs it: synthesise data, validate a config, train, inspect and tamper with a bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.configs import tiny_raw
from tests.support.paths import REPO

pytestmark = pytest.mark.e2e


def robustdx(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robustdx.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_lists_commands() -> None:
    out = robustdx("--help")
    assert out.returncode == 0
    commands = ("train", "experiment", "data", "sweep", "info", "evaluate", "promote", "demo", "retrain", "deploy")
    for cmd in (*commands, "serve", "serve-demo", "explain", "alert-receiver", "stack"):
        assert cmd in out.stdout, cmd
    stack = robustdx("stack", "--help")
    assert stack.returncode == 0 and all(c in stack.stdout for c in ("up", "down", "status"))


def test_synth_train_info_and_tamper(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = robustdx("data", "synth", "--out", str(data), "--per-class", "12", "--size", "32")
    assert out.returncode == 0, out.stderr
    assert (data / "camelyon17_v1.0" / "metadata.csv").is_file()
    again = robustdx("data", "synth", "--out", str(data), "--per-class", "12", "--size", "32")
    assert again.returncode == 0 and "already holds this synthetic" in again.stdout
    other = robustdx("data", "synth", "--out", str(data))  # other settings: reported, left alone
    assert other.returncode == 2, other.stdout + other.stderr
    assert "per_class=12" in other.stderr and "--force" in other.stderr
    assert len(list(data.rglob("*.png"))) == 5 * 2 * 12

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(data, tmp_path / "runs", name="cli")))
    dry = robustdx("train", "-c", str(cfg), "--set", "pretrain.epochs=1", "--dry-run")
    assert dry.returncode == 0 and "epochs: 1" in dry.stdout and not (tmp_path / "runs").exists()

    run = robustdx("train", "-c", str(cfg), "--no-progress")
    assert run.returncode == 0, run.stderr
    bundle = tmp_path / "runs" / "cli" / "bundle"
    assert (tmp_path / "runs" / "cli" / "report.md").is_file()

    home = tmp_path / "bentoml"
    promoted = robustdx("promote", str(bundle), "--home", str(home), "--n-robust", "16")
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted robustdx-classifier:" in promoted.stdout and "clean_acc" in promoted.stdout
    assert "Bento robustdx:" in promoted.stdout, promoted.stdout[-2000:]  # promote builds the model's Bento
    no_previous = robustdx("promote", "--rollback", "--home", str(home))
    assert no_previous.returncode == 2 and "nothing to roll back to" in no_previous.stderr
    both = robustdx("promote", str(bundle), "--rollback", "--home", str(home))
    assert both.returncode == 2 and "not both" in both.stderr
    neither = robustdx("promote", "--home", str(home))
    assert neither.returncode == 2 and "give the bundle folder" in neither.stderr

    info = robustdx("info", str(bundle), "--json")
    assert info.returncode == 0, info.stderr
    assert '"recipe": "adv_supcon_ft"' in info.stdout and '"model_card": true' in info.stdout
    card = robustdx("info", str(bundle), "--card")
    assert card.returncode == 0 and card.stdout.startswith("# Model card") and "| class | clean recall |" in card.stdout

    card_file = bundle / "MODEL_CARD.md"
    honest = card_file.read_text()
    card_file.write_text(honest.replace("## Do not use", "## Use freely"))
    edited = robustdx("info", str(bundle))
    assert edited.returncode == 2 and "MODEL_CARD.md" in edited.stderr, edited.stderr
    card_file.write_text(honest)

    weights = bundle / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    bad = robustdx("info", str(bundle))
    assert bad.returncode == 2
    assert "SHA-256" in bad.stderr and "model.safetensors" in bad.stderr
    refused = robustdx("promote", str(bundle), "--home", str(home))
    assert refused.returncode == 2 and "model.safetensors" in refused.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.epoch=3", "Did you mean 'epochs'"),
        ("attack.eps=8", "8/255"),
        ("model.arch=resnt18", "resnet18"),
        ("recipe=adv_supcon_fine", "recipe"),
        ("data.root=/nonexistent/robustdx-data", "robustdx data synth"),
    ],
)
def test_bad_input_gives_a_clear_message_and_exit_2(override: str, message: str, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(tmp_path / "nodata", tmp_path / "runs")))
    out = robustdx("train", "-c", str(cfg), "--set", override)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    out = robustdx("train", "-c", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "does not exist" in out.stderr
