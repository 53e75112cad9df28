"""difflab: diffusion models on your own data.

The public API is imported lazily so ``import difflab`` stays cheap::

    import difflab
    model = difflab.load("runs/digits")          # a trained run folder
    x = model.sample(16, sampler="heun", steps=18, seed=0)   # data units
    d = model.denoiser(x_noisy, sigma)            # EDM convention: x_noisy = x0 + sigma * noise
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load", "train", "load_data", "ExperimentCfg", "Denoiser", "sampling", "__version__"]


def __getattr__(name: str):
    if name == "load":
        from .model import load

        return load
    if name == "train":
        from .training import train

        return train
    if name == "load_data":
        from .data import load_data

        return load_data
    if name == "ExperimentCfg":
        from .config import ExperimentCfg

        return ExperimentCfg
    if name == "Denoiser":
        from .denoiser import Denoiser

        return Denoiser
    if name == "sampling":
        import importlib

        return importlib.import_module(".sampling", __name__)
    raise AttributeError(f"module 'difflab' has no attribute {name!r}")
