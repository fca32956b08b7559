"""Scripts run from the Makefile (`make demo`); run them as modules: `python -m scripts.demo`."""

__all__: list[str] = []
