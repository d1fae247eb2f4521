"""Run folders: distinct folders per run, and ckpt_path resolved on the command line."""

import json
import os
import shlex
from pathlib import Path

import pytest

from autoexp.callbacks.safety import resume_command
from autoexp.resume import ResumeError, find_last_checkpoint, prepare_resume
from autoexp.sweep import remove_created_parents, reserve_run_dir
from tests.conftest import run_cli

QUIET = ["trainer.enable_progress_bar=false", "model.latent_dim=4"]


def test_remove_created_parents_keeps_older_folders(tmp_path):
    (tmp_path / "outputs").mkdir()
    run_dir = Path(reserve_run_dir(str(tmp_path / "outputs" / "2026-12-05" / "10-00-00")))
    run_dir.rmdir()
    remove_created_parents(run_dir)
    # The date folder was created for the run, and outputs/ was there before.
    assert list(tmp_path.iterdir()) == [tmp_path / "outputs"]
    assert list((tmp_path / "outputs").iterdir()) == []


def test_remove_created_parents_keeps_used_folders(tmp_path):
    first = Path(reserve_run_dir(str(tmp_path / "day" / "10-00-00")))
    second = Path(reserve_run_dir(str(tmp_path / "day" / "10-00-01")))
    first.rmdir()
    remove_created_parents(first)
    # Another run's folder is still in day/, so day/ stays.
    assert list((tmp_path / "day").iterdir()) == [second]


def test_reserve_run_dir_same_second(tmp_path):
    base = str(tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    first, second, third = (reserve_run_dir(base) for _ in range(3))
    assert first == base
    assert second == base + "_1"
    assert third == base + "_2"
    assert all(Path(path).is_dir() for path in (first, second, third))


def make_run(log_dir: Path, name: str, overrides: list[str]) -> Path:
    run_dir = log_dir / "2026-01-01" / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {item}\n" for item in overrides)
    )
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run_dir


def test_find_last_checkpoint_matches_overrides(tmp_path):
    older = make_run(tmp_path, "10-00-00", ["model.latent_dim=4", "trainer.max_epochs=2"])
    make_run(tmp_path, "10-00-01", ["model.latent_dim=8"])
    found = find_last_checkpoint(tmp_path, ["model.latent_dim=4", "ckpt_path=last"])
    assert found == older / "checkpoints" / "last.ckpt"


def test_find_last_checkpoint_reports_none(tmp_path):
    with pytest.raises(ResumeError, match="ckpt_path=last: no earlier run with overrides seed=3"):
        find_last_checkpoint(tmp_path, ["seed=3", "ckpt_path=last"])


def test_prepare_resume_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = str(tmp_path / "nowhere.ckpt")
    with pytest.raises(ResumeError, match=f"not found: tried {expected}"):
        prepare_resume(["ckpt_path=nowhere.ckpt"], tmp_path / "outputs", multirun=False)


def test_prepare_resume_rejects_corrupt_checkpoint(tmp_path):
    run_dir = make_run(tmp_path / "outputs", "10-00-00", [])
    with pytest.raises(ResumeError, match="last.ckpt is not a readable checkpoint"):
        prepare_resume([f"ckpt_path={run_dir}/checkpoints/last.ckpt"], tmp_path, False)


def test_prepare_resume_continues_in_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The empty placeholder checkpoint would be rejected; its checks are tested elsewhere.
    monkeypatch.setattr("autoexp.resume.check_resume_checkpoint", lambda path, model: None)
    run_dir = make_run(tmp_path / "outputs", "10-00-00", [])
    relative = "outputs/2026-01-01/10-00-00/checkpoints/last.ckpt"
    overrides = prepare_resume([f"ckpt_path={relative}"], tmp_path / "outputs", False)
    assert overrides == [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={run_dir}",
    ]
    # The folder's config is copied aside only after the checkpoint fits the config.
    assert not list((run_dir / ".hydra").glob("before-resume-*"))


def test_cli_resume_last_into_same_folder(tmp_path):
    first = run_cli(["-m", "autoexp.train", "trainer.max_epochs=1", *QUIET], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli(
        ["-m", "autoexp.train", "trainer.max_epochs=2", "ckpt_path=last", *QUIET], cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1, "the resumed run must continue in the first run's folder"
    record = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert record["epochs"] == 2
    assert len(list(run_dirs[0].glob("events.out.tfevents.*"))) >= 2
    assert list((run_dirs[0] / ".hydra").glob("before-resume-*/config.yaml"))

    # The resumed run is reproduced from scratch, also from another folder than the launch
    # folder that its relative ckpt_path=last resolved against.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = run_cli(["-m", "autoexp.reproduce", str(run_dirs[0])], cwd=elsewhere)
    assert again.returncode == 0, again.stdout + again.stderr
    output = again.stdout + again.stderr
    assert f"Restoring states from the checkpoint path at {run_dirs[0]}" not in output
    assert "Reproduced: every metric within rtol=1e-06" in again.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("model.latent_dim=12", "model.latent_dim=4 in the checkpoint, 12 in the config"),
        ("trainer.max_epochs=1", "was saved in epoch 2, beyond trainer.max_epochs=1"),
        ("model.activation=gelu", "model.activation='relu' in the checkpoint, 'gelu' in the"),
        ("model.optimizer.lr=0.01", "model.optimizer.lr=0.001 in the checkpoint, 0.01 in the"),
    ],
)
def test_cli_rejected_resume_keeps_run_config(tmp_path, change, expected):
    first = run_cli(["-m", "autoexp.train", "trainer.max_epochs=3", *QUIET], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"

    second = run_cli(
        ["-m", "autoexp.train", *QUIET, change, f"ckpt_path={checkpoint}"], cwd=tmp_path
    )
    assert second.returncode == 2, second.stderr
    assert expected in second.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config
    assert not list((run_dir / ".hydra").glob("before-resume-*"))
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]


def test_cli_rejects_missing_checkpoint(tmp_path):
    result = run_cli(["-m", "autoexp.train", "ckpt_path=missing/last.ckpt"], cwd=tmp_path)
    assert result.returncode == 2
    assert f"not found: tried {tmp_path / 'missing' / 'last.ckpt'}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_find_last_checkpoint_prefers_newer_interrupted(tmp_path):
    run_dir = make_run(tmp_path, "10-00-00", [])
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    interrupted.write_bytes(b"")
    last_time = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime
    os.utime(interrupted, (last_time + 10, last_time + 10))
    assert find_last_checkpoint(tmp_path, ["ckpt_path=last"]) == interrupted


def test_cli_resume_sweep_job_checkpoint(tmp_path):
    # Sweep job folders are named after their overrides, so the checkpoint's path contains "=",
    # which Hydra accepts in a value only when quoted.
    sweep = run_cli(
        ["-m", "autoexp.train", "-m", *QUIET, "trainer.max_epochs=1", "seed=0,1"], cwd=tmp_path
    )
    assert sweep.returncode == 0, sweep.stderr
    (job_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*/seed=1")
    checkpoint = job_dir / "checkpoints" / "last.ckpt"
    quoted = resume_command([], checkpoint).split(" ", 1)[1]
    assert shlex.split(quoted) == [f"ckpt_path='{checkpoint}'"]

    args = ["-m", "autoexp.train", *QUIET, "seed=1", "trainer.max_epochs=2", *shlex.split(quoted)]
    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((job_dir / "metrics.json").read_text())
    assert record["epochs"] == 2
