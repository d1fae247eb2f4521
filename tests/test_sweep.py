"""Sweeps through the CLI, job naming, failed jobs, autoexp-report and autoexp-reproduce."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from autoexp.sweep import job_name
from tests.conftest import run_cli

SWEEP_ARGS = [
    "-m",
    "autoexp.train",
    "-m",
    "model=mlp_ae,linear_pca_ae",
    "model.latent_dim=2,100",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
]
# linear_pca_ae cannot have 100 components on 8x8 digits, so that job fails on purpose.
FAILING_JOB = "model=linear_pca_ae,model.latent_dim=100"
JOBS = {
    "model=mlp_ae,model.latent_dim=2",
    "model=mlp_ae,model.latent_dim=100",
    "model=linear_pca_ae,model.latent_dim=2",
    FAILING_JOB,
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, object]:
    """Run one 4-job sweep on digits with one failing job; return its folder and the result."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_cli(SWEEP_ARGS, cwd=cwd, timeout=600)
    sweep_dirs = list((cwd / "outputs" / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 1, result.stderr
    return sweep_dirs[0], result


def test_job_name_puts_groups_first(monkeypatch):
    monkeypatch.delenv("AUTOEXP_SWEPT_KEYS", raising=False)
    assert (
        job_name(["model.latent_dim=8", "model=kmeans_ae"]) == "model=kmeans_ae,model.latent_dim=8"
    )
    assert job_name(["experiment=latent_sweep", "data.root=/a/b"]) == "data.root=_a_b"
    assert job_name([]) == "default"


def test_job_name_keeps_swept_keys_only(monkeypatch):
    monkeypatch.setenv("AUTOEXP_SWEPT_KEYS", "model,model.latent_dim")
    name = job_name(["model=mlp_ae", "model.latent_dim=4", "trainer.max_epochs=5"])
    assert name == "model=mlp_ae,model.latent_dim=4"


def test_sweep_names_job_folders(sweep):
    sweep_dir, _ = sweep
    jobs = {path.name for path in sweep_dir.iterdir() if path.is_dir()}
    assert jobs == JOBS


def test_sweep_records_failed_job(sweep):
    sweep_dir, result = sweep
    assert result.returncode == 1
    failure = json.loads((sweep_dir / FAILING_JOB / "failure.json").read_text())
    assert "model.latent_dim=100" in failure["error"]
    assert not (sweep_dir / FAILING_JOB / "metrics.json").exists()
    last_line = result.stderr.strip().splitlines()[-1]
    relative_sweep_dir = sweep_dir.relative_to(sweep_dir.parents[3])
    assert last_line == f"1 failed job(s) in {relative_sweep_dir}: {FAILING_JOB}"
    for job in JOBS - {FAILING_JOB}:
        assert (sweep_dir / job / "metrics.json").is_file(), f"{job} did not finish"


def test_sweep_hparams_in_events(sweep):
    sweep_dir, _ = sweep
    events = EventAccumulator(str(sweep_dir / "model=mlp_ae,model.latent_dim=2"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "mlp_ae"
    assert hparams["latent_dim"].number_value == 2
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    tags = {info.name.tag for info in experiment.experiment.metric_infos}
    assert {"val/loss", "test/loss", "test/mse"} <= tags
    assert "test/mse" in events.Tags()["scalars"]


def test_report_summarises_sweep(sweep):
    sweep_dir, _ = sweep
    result = run_cli(["-m", "autoexp.report", str(sweep_dir)], cwd=sweep_dir)
    assert result.returncode == 0, result.stderr
    with (sweep_dir / "summary.csv").open() as file:
        rows = {row["job"]: row for row in csv.DictReader(file)}
    assert set(rows) == JOBS
    assert list(next(iter(rows.values()))) == [
        "job",
        "model",
        "latent_dim",
        "data",
        "seed",
        "test/loss",
        "test/mse",
        "n_parameters",
        "train_time_s",
        "status",
    ]
    for job in JOBS - {FAILING_JOB}:
        record = json.loads((sweep_dir / job / "metrics.json").read_text())
        row = rows[job]
        assert row["model"] == record["model"]
        assert int(row["latent_dim"]) == record["latent_dim"]
        assert float(row["test/mse"]) == record["metrics"]["test/mse"]
        assert int(row["n_parameters"]) == record["n_parameters"]
        assert row["status"] == "ok"
    assert rows[FAILING_JOB]["status"].startswith("failed: ConfigError: model.latent_dim=100")
    assert (sweep_dir / "summary.md").read_text().count("\n") == 2 + len(JOBS)
    assert (sweep_dir / "mse_vs_latent.png").stat().st_size > 10_000
    assert "model=mlp_ae,model.latent_dim=2" in result.stdout


def test_report_accepts_run_folders(sweep, tmp_path):
    sweep_dir, _ = sweep
    runs = [
        sweep_dir / "model=mlp_ae,model.latent_dim=2",
        sweep_dir / "model=linear_pca_ae,model.latent_dim=2",
    ]
    result = run_cli(
        ["-m", "autoexp.report", *map(str, runs), "--out", str(tmp_path), "--no-plot"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    with (tmp_path / "summary.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 2


def test_report_rejects_folder_without_runs(tmp_path):
    result = run_cli(["-m", "autoexp.report", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 2
    assert "No runs found" in result.stderr


def test_reproduce_matches(sweep, tmp_path):
    sweep_dir, _ = sweep
    run_dir = sweep_dir / "model=linear_pca_ae,model.latent_dim=2"
    result = run_cli(
        ["-m", "autoexp.reproduce", str(run_dir), "--out", str(tmp_path / "again")], cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Reproduced: every metric within rtol=1e-06" in result.stdout
    for line in result.stdout.splitlines():
        if line.startswith(("test/", "val/")):
            assert line.split()[3] == "0.00e+00", line


def test_reproduce_reports_difference(sweep, tmp_path):
    sweep_dir, _ = sweep
    run_dir = tmp_path / "changed"
    shutil.copytree(sweep_dir / "model=mlp_ae,model.latent_dim=2", run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    record["metrics"]["test/mse"] *= 1.001
    (run_dir / "metrics.json").write_text(json.dumps(record))
    result = run_cli(
        ["-m", "autoexp.reproduce", str(run_dir), "--out", str(tmp_path / "again")], cwd=tmp_path
    )
    assert result.returncode == 1
    differing = [line for line in result.stdout.splitlines() if line.endswith("DIFFERS")]
    assert [line.split()[0] for line in differing] == ["test/mse"]
    assert "Not reproduced" in result.stdout


def test_reproduce_rejects_missing_run(tmp_path):
    result = run_cli(["-m", "autoexp.reproduce", str(tmp_path / "nothing")], cwd=tmp_path)
    assert result.returncode == 2
    assert "config.yaml not found" in result.stderr
