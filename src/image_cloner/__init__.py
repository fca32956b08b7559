"""image-cloner: keep your own copies of the container images your cluster runs."""

__all__ = ["__version__"]

__version__ = "0.1.0"
