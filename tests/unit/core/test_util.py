"""Shared utilities (core/util.py): devices and seeds, atomic writes, JSON/CSV/Markdown output, ports
and waiting."""

from __future__ import annotations

import csv
import json
import random
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustdx.core.util import (
    atomic_write_bytes,
    epoch_seed,
    free_port,
    git_commit,
    jsonable,
    markdown_table,
    resolve_device,
    seed_everything,
    wait_until,
    write_csv,
)

pytestmark = pytest.mark.unit


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="use device=auto or cpu"):
            resolve_device("cuda")


def test_seed_everything_seeds_python_numpy_and_torch() -> None:
    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first
    seed_everything(4)
    assert draw() != first


def test_epoch_seed_is_distinct_per_seed_and_epoch() -> None:
    seeds = {epoch_seed(s, e) for s in range(20) for e in range(50)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert epoch_seed(1, 2) == epoch_seed(1, 2)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("old")
    atomic_write_bytes(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_that_fails_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("old")

    def broken(p: Path) -> None:
        p.write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, broken)
    assert path.read_text() == "old"


def test_jsonable_makes_numpy_scalars_numbers_and_keys_strings() -> None:
    obj = {1: np.float32(0.5), "a": [np.int64(3), (np.bool_(True), "x")], "n": None}
    out = jsonable(obj)
    assert out == {"1": 0.5, "a": [3, [True, "x"]], "n": None}
    assert json.loads(json.dumps(out)) == out
    assert type(out["a"][0]) is int


def test_write_csv_takes_the_union_of_columns_in_first_seen_order(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": 2}, {"c": 3, "a": 4}]
    path = write_csv(tmp_path / "t.csv", rows)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["a", "b", "c"]
        assert list(reader) == [{"a": "1", "b": "2", "c": ""}, {"a": "4", "b": "", "c": "3"}]
    write_csv(path, rows[:1], fields=["b", "a"])
    assert path.read_text().splitlines() == ["b,a", "2,1"]


def test_markdown_table_format() -> None:
    table = markdown_table([{"name": "ce", "acc": 0.5, "n": 3}, {"name": "adv"}], ["name", "acc", "n"])
    assert table == "| name | acc | n |\n|---|---|---|\n| ce | 0.5000 | 3 |\n| adv |  |  |\n"


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_until_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "ready"])
    assert wait_until(lambda: next(values), timeout=5, what="the service", interval=0.01) == "ready"


def test_wait_until_times_out_naming_what_it_waited_for() -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="waiting for the model server"):
        wait_until(lambda: False, timeout=0.2, what="the model server", interval=0.05)
    assert 0.2 <= time.monotonic() - t0 < 5


def test_git_commit_is_the_checkout_of_the_folder_given_with_dirty_marked(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"  # not a repository
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run(["git", "add", "a.txt"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "one"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "b.txt").write_text("untracked files do not count")
    assert git_commit(repo) == head
    (repo / "results").mkdir()
    (repo / "results" / "r.json").write_text("1")
    subprocess.run(["git", "add", "results/r.json"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "two"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    (repo / "results" / "r.json").write_text("2")  # a result written by an earlier benchmark of the same run
    assert git_commit(repo) == head + "+dirty"
    assert git_commit(repo, ignore=["results"]) == head
    (repo / "a.txt").write_text("2")
    assert git_commit(repo, ignore=["results"]) == head + "+dirty"
