"""Config validation: typed schemas, ranges, model limits, and the command line's exit code."""

from pathlib import Path

import pytest
import torch

from autoexp.config import ConfigError, validate_config
from autoexp.config.command_line import check_command_line
from autoexp.config.schema import omegaconf_type
from autoexp.train import CONFIG_DIR
from tests.conftest import run_cli

# (overrides, text expected in the error); each must exit with code 2 and create nothing.
INVALID_COMMAND_LINES = [
    (["model.latent_dim=eight"], "model.latent_dim='eight' is invalid: expected an integer"),
    (["model.latent_dimm=3"], "model.latent_dimm: unknown key; did you mean 'model.latent_dim'?"),
    (["trainr.max_epochs=3"], "did you mean 'trainer.max_epochs'?"),
    (["model=mlp"], "; did you mean 'mlp_ae'?\n"),
    (["model=pca"], "model=pca: no such option of group 'model' (options: ['kmeans_ae', "),
    (["model=pca"], "'linear_pca_ae', 'mlp_ae']); did you mean 'linear_pca_ae'?\n"),
    (
        ["model.solver=eigh"],
        "model.solver: unknown key for the selected model; it is a setting of kmeans_ae, "
        "linear_pca_ae (select one with model=...)",
    ),
    (
        [
            "model=linear_pca_ae",
            "model.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,step_size:1}",
        ],
        "model.lr_scheduler.step_size: unknown key in model.lr_scheduler (its keys: _target_, "
        "T_max); to replace model.lr_scheduler as a whole, remove it first: ~model.lr_scheduler "
        "'+model.lr_scheduler={_target_:...,...}'",
    ),
    (
        ["callbacks={image_logger:{n_images:4,size:1}}"],
        "callbacks.image_logger.size: unknown key in callbacks.image_logger (its keys: _target_, "
        "n_images, max_filters, every_n_epochs); to replace callbacks.image_logger as a whole",
    ),
    (
        ["+trainer.profiler=fast"],
        "trainer.profiler='fast' is not a Lightning profiler; use one of ['simple', "
        "'advanced', 'pytorch', 'xla']",
    ),
    (
        ["~model.optimizer", "+model.optimizer={lr:0.1}"],
        "model.optimizer has no _target_, so no class can be built from it; name one, for "
        "example +model.optimizer._target_=torch.optim.Adam",
    ),
    (["model.recursive=false"], "model.recursive: unknown key\n"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5 must be >= 1 (or -1 for no limit)"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 must be >= 1 (or -1 for no limit)"),
    (["+model.foo=1"], "model.foo: unknown key"),
    (["model.optimizer.lr=0"], "model.optimizer.lr=0 must be finite and > 0"),
    (["model.optimizer.lr=inf"], "model.optimizer.lr=inf must be finite and > 0"),
    (["seed=-1"], "seed=-1 must be in [0, 2**32 - 1]"),
    (["data.num_workers=-1"], "data.num_workers=-1 must be >= 0"),
    (["model.activation=foo"], "model.activation='foo' is not supported"),
    (["data=mnist", "data.root=empty"], "MNIST IDX files not found"),
    (["model.latent_dim=0"], "model.latent_dim=0 must be >= 1"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5 must be in (0, 1)"),
    (["data.batch_size=0"], "data.batch_size=0 must be >= 1"),
    (["data.download=maybe"], "data.download='maybe' is invalid: expected true or false"),
    (["model.hidden_dims=[a,b]"], "expected a list of integers"),
    (
        ["model=linear_pca_ae", "model.latent_dim=65"],
        "model.latent_dim=65 must be <= 64, the number of pixels of digits images",
    ),
    (
        ["model=kmeans_ae", "model.latent_dim=1295"],
        "model.latent_dim=1295 (clusters) must be <= 1294, the number of training images",
    ),
    (["callbacks=null"], "callbacks=null: a config group cannot be set to null on the command"),
    (["callbacks.image_logger.every_n_epochs=0"], "every_n_epochs=0 must be >= 1"),
    (["model.latent_dim='8'"], "expected an integer, got a string; drop the quotes"),
    (["model.optimizer.lr='1e-3'"], "got a string; drop the quotes: model.optimizer.lr=1e-3"),
    (["model=kmeans_ae", "model.solver=elkan"], "model.solver='elkan' is not supported"),
    (["model=kmeans_ae", "model.n_init=0"], "model.n_init=0 must be an integer >= 1"),
    (["model=kmeans_ae", "model.tol=nan"], "model.tol=nan must be finite and >= 0"),
    (["data.pixel_dtype=float16"], "data.pixel_dtype='float16' must be one of"),
    (["data.shuffle=maybe"], "data.shuffle='maybe' is invalid: expected true or false"),
    (["data.shuffle=off"], "data.shuffle='off' is invalid: expected true or false; pass data.shu"),
    (["data.shuffle=1"], "data.shuffle=1 is invalid: expected true or false; pass data.shuffle=t"),
    (["test=no"], "test='no' is invalid: expected true or false; pass test=false"),
    (["model=kmeans_ae", "model.init=kmeans++"], "model.init='kmeans++' is neither k-means++"),
    (["model=linear_pca_ae", "model.solver=svd"], "model.solver='svd' is not supported"),
    (
        ["data.val_fraction=0.99", "data.test_fraction=0.99"],
        "data.val_fraction=0.99 and data.test_fraction=0.99 leave no training images of digits",
    ),
    (["data.val_fraction=0.0001"], "leaves no validation images of digits"),
    (["data.test_fraction=0.0001"], "data.test_fraction=0.0001 leaves no test images of digits"),
    (["seed=${nope}"], "seed: interpolation failed to resolve"),
    (["seed=???"], "seed: missing mandatory value"),
]


@pytest.mark.parametrize(("overrides", "expected"), INVALID_COMMAND_LINES)
def test_check_command_line_rejects(tmp_path, monkeypatch, capsys, overrides, expected):
    monkeypatch.chdir(tmp_path)
    assert check_command_line(overrides, CONFIG_DIR, "train") == 2
    assert expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "an invalid config must create no folder"


@pytest.mark.parametrize(("overrides", "expected"), INVALID_COMMAND_LINES[:2])
def test_cli_rejects_invalid_config(tmp_path, overrides, expected):
    result = run_cli(["-m", "autoexp.train", *overrides], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "an invalid config must create no folder"


def test_check_command_line_rejects_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["-m", "model=linear_pca_ae", "model.latent_dim=65,100"]
    assert check_command_line(argv, CONFIG_DIR, "train") == 2
    assert "model.latent_dim=65 must be <= 64" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_check_command_line_warns_partial_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["-m", "model=linear_pca_ae", "model.latent_dim=8,65"]
    assert check_command_line(argv, CONFIG_DIR, "train") == 0
    err = capsys.readouterr().err
    assert "warning: job model=linear_pca_ae,model.latent_dim=65 will fail" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_check_command_line_rejects_missing_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert check_command_line(["trainer=gpu"], CONFIG_DIR, "train") == 2
    assert "no CUDA GPU is available here; use trainer=cpu" in capsys.readouterr().err


def test_check_command_line_reads_saved_config(train_config, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    saved = tmp_path / "model=mlp_ae,model.latent_dim=8" / ".hydra"
    saved.mkdir(parents=True)
    cfg = train_config("model.latent_dim=8")
    OmegaConf.save({key: cfg[key] for key in cfg if key != "hydra"}, saved / "config.yaml")
    monkeypatch.chdir(tmp_path)
    argv = ["--config-dir", str(saved), "--config-name", "config"]
    assert check_command_line(argv, CONFIG_DIR, "train") == 0


def test_check_command_line_skips_help(capsys):
    assert check_command_line(["--help"], CONFIG_DIR, "train") == 0
    assert check_command_line(["--cfg", "job", "model.latent_dim=eight"], CONFIG_DIR, "train") == 0


def test_validate_config_lists_every_problem(train_config):
    cfg = train_config("model.latent_dim=0", "data.val_fraction=2")
    with pytest.raises(ConfigError, match="model.latent_dim=0 must be >= 1") as raised:
        validate_config(cfg)
    assert len(raised.value.problems) == 2
    assert "data.val_fraction=2" in raised.value.problems[1]


@pytest.mark.parametrize("model", ["mlp_ae", "linear_pca_ae", "kmeans_ae"])
def test_validate_config_accepts_defaults(train_config, model):
    validate_config(train_config(f"model={model}"))


def test_omegaconf_type_maps_annotations():
    assert omegaconf_type(int) is int
    assert str(omegaconf_type(float | None)) == "typing.Optional[float]"
    assert omegaconf_type(int | float) is float
    assert omegaconf_type(list[int] | tuple[int, ...]) == list[int]
    assert omegaconf_type(tuple[int, int, int]) is not list[int]
    assert omegaconf_type(str | Path | None) is not str
