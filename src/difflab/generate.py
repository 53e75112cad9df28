"""Generation: start from sigma_max noise and run a sampler over a sigma grid.

Noise is drawn per sample from its own seed (as EDM's ``StackedRandomGenerator``), so sample i depends on
``seed + i`` only, not on the batch size or on how many other samples are drawn.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import sampling
from .denoiser import CFGDenoiser


class PerSampleNoise:
    """One CPU generator per sample; each call stacks one standard normal draw from each generator.

    Drawing on the CPU and then moving to ``device`` keeps a seed's samples the same on any device. An
    instance is the samplers' ``NoiseFn``: ``noise(sigma, sigma_next)`` returns a tensor shaped like x.
    With ``draws`` = k, generator i serves k rows (rows i*k .. i*k+k-1 of the (N*k, *shape) result): k
    draws per input, e.g. k posterior samples to average, that do not depend on the batch they ran in.
    """

    def __init__(self, seeds: list[int], shape: tuple[int, ...], device="cpu", dtype=torch.float32,
                 draws: int = 1):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.device, self.dtype, self.draws = tuple(shape), device, dtype, draws

    def subset(self, inputs: list[int]) -> PerSampleNoise:
        """The noise of inputs ``inputs`` only: their generators, shared (drawing from the subset advances
        them here too), so a group of inputs run on its own draws what it would in any batch."""
        out = PerSampleNoise([], self.shape, self.device, self.dtype, self.draws)
        out.generators = [self.generators[i] for i in inputs]
        return out

    def randn(self) -> Tensor:
        x = torch.stack([torch.randn((self.draws, *self.shape), generator=g) for g in self.generators])
        return x.reshape(-1, *self.shape).to(device=self.device, dtype=self.dtype)

    def __call__(self, sigma=None, sigma_next=None) -> Tensor:
        return self.randn()


def generate(
    denoiser,
    shape: tuple[int, ...],
    n: int,
    *,
    sigmas: Tensor,
    sampler: str = "heun",
    seed: int = 0,
    class_labels: Tensor | None = None,
    guidance: float = 1.0,
    num_classes: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **options,
) -> Tensor:
    """Draw ``n`` samples of ``shape`` in the model's normalised space (returned on the CPU, float32).

    ``class_labels`` (LongTensor (n,)) with ``guidance`` w applies classifier-free guidance.
    """
    fn = sampling.get_sampler(sampler)
    if class_labels is not None and guidance != 1.0:
        denoiser = CFGDenoiser(denoiser, num_classes, guidance)
    out = []
    bar = tqdm(total=n, desc=f"sampling ({sampler})", unit="sample", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        noise = PerSampleNoise(list(range(seed + start, seed + stop)), shape, device=device)
        x = noise.randn() * float(sigmas[0])
        cond = None if class_labels is None else {"class_labels": class_labels[start:stop].to(device)}
        with torch.no_grad():
            y = fn(denoiser, x, sigmas, cond=cond, noise=noise, **options)
        out.append(y.float().cpu())
        bar.update(stop - start)
    bar.close()
    return torch.cat(out)
