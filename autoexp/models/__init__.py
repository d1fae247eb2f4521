"""The autoencoders, by config name, and loading any checkpoint autoexp wrote."""

import pickle
import zipfile
from pathlib import Path

import torch

from autoexp.models.base import AutoencoderModule
from autoexp.models.kmeans_ae import KMeansAutoencoder
from autoexp.models.linear_pca_ae import LinearPCAAutoencoder
from autoexp.models.mlp_ae import MLPAutoencoder

MODELS: dict[str, type[AutoencoderModule]] = {
    MLPAutoencoder.model_name: MLPAutoencoder,
    LinearPCAAutoencoder.model_name: LinearPCAAutoencoder,
    KMeansAutoencoder.model_name: KMeansAutoencoder,
}


def checkpoint_model_name(checkpoint: dict, path: Path) -> str:
    name = checkpoint.get("autoexp_model")
    if name not in MODELS:
        raise ValueError(
            f"{path} is not an autoexp checkpoint: it names model {name!r}, expected one of "
            f"{sorted(MODELS)}. Pass a checkpoint written by autoexp-train."
        )
    return name


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file on the CPU, raising a clear error for a missing or corrupt file."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        # Lightning checkpoints hold plain Python containers besides tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as error:
        raise ValueError(f"{path} is not a readable checkpoint ({error})") from error


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> AutoencoderModule:
    """Load any model checkpoint written by autoexp, in eval mode, for analysis.

    The parameters do not require gradients, so that `encode` and `decode` return plain
    tensors. Call `model.requires_grad_(True).train()` to train the model further. The
    weights of mlp_ae and linear_pca_ae are float32 also where the run used
    trainer.precision=64-true, so the model takes the float32 images of `load_split`; call
    `model.double()` to compute in float64. kmeans_ae keeps its centroids in float64 in any
    run and takes float32 images as well.

    Args:
        path: A `.ckpt` file, e.g. `outputs/<date>/<time>/checkpoints/last.ckpt`.
        map_location: Device to load the weights onto.

    Returns:
        The model, of the class that wrote the checkpoint.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a checkpoint written by autoexp.
    """
    path = Path(path).expanduser().absolute()
    checkpoint = read_checkpoint(path)
    model_class = MODELS[checkpoint_model_name(checkpoint, path)]
    model = model_class(**checkpoint["hyper_parameters"])
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval().requires_grad_(False)


__all__ = [
    "MODELS",
    "AutoencoderModule",
    "KMeansAutoencoder",
    "LinearPCAAutoencoder",
    "MLPAutoencoder",
    "load_model",
    "read_checkpoint",
]
