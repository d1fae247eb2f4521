"""autoexp: Hydra and Lightning experiments with autoencoders, PCA and k-means."""

from autoexp.models import load_model

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]
