"""Model `mlp_ae`: an MLP encoder and an MLP decoder ending in a sigmoid."""

import torch
from torch import nn

from autoexp.models.base import AutoencoderModule, to_container

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leakyrelu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}


def make_mlp(widths: list[int], activation: str) -> nn.Sequential:
    """Build Linear layers between consecutive widths, with the activation between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPAutoencoder(AutoencoderModule):
    """MLP autoencoder: f = MLP(n_pixels, *hidden_dims, latent_dim), g mirrors it.

    Args:
        image_shape: (channels, height, width) of the images.
        latent_dim: Width of the bottleneck.
        hidden_dims: Encoder widths between the input and the code; the decoder reverses them.
        activation: Name of the activation between layers, a key of ACTIVATIONS.
        optimizer: Config of a torch.optim optimizer, e.g. {"_target_": "torch.optim.Adam",
            "lr": 1e-3}.
    """

    model_name = "mlp_ae"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | list[int],
        latent_dim: int = 32,
        hidden_dims: list[int] | tuple[int, ...] = (512, 128),
        activation: str = "relu",
        optimizer: dict | None = None,
    ):
        if optimizer is None:
            optimizer = {"_target_": "torch.optim.Adam", "lr": 1e-3}
        super().__init__(image_shape, latent_dim, optimizer)
        hidden_dims = list(to_container(hidden_dims))
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation={activation!r} is not supported; use one of "
                f"{sorted(ACTIVATIONS)}"
            )
        if any(not isinstance(width, int) or width < 1 for width in hidden_dims):
            raise ValueError(f"model.hidden_dims={hidden_dims} must be integers >= 1")
        self.save_hyperparameters(
            {
                "image_shape": list(self.image_shape),
                "latent_dim": latent_dim,
                "hidden_dims": hidden_dims,
                "activation": activation,
                "optimizer": self.optimizer_config,
            }
        )

        widths = [self.n_pixels, *hidden_dims, latent_dim]
        self.encoder = nn.Sequential(nn.Flatten(), make_mlp(widths, activation))
        self.decoder = nn.Sequential(
            make_mlp(widths[::-1], activation),
            nn.Sigmoid(),
            nn.Unflatten(1, self.image_shape),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def filters(self) -> dict[str, torch.Tensor]:
        # Rows of the first encoder layer and columns of the last decoder layer are images.
        first = self.encoder[1][0].weight  # (hidden_dims[0], n_pixels)
        last = self.decoder[0][-1].weight  # (n_pixels, hidden_dims[0])
        return {
            "encoder": first.detach().reshape(-1, *self.image_shape),
            "decoder": last.detach().T.reshape(-1, *self.image_shape),
        }
