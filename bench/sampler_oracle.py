"""Sampler error at a fixed budget of denoiser calls, with the exact denoiser of difflab's gmm2d mixture.

Every deterministic sampler starts from the same noise (2,000 points at sigma_max = 80) and is compared
with a 400-step Heun reference on a log-SNR grid; the figure is the mean distance to the reference endpoint.
No network is involved, so this isolates solver error (peers' implementations: issue 3's bench/samplers).

    python bench/sampler_oracle.py [--nfe 10 20] [--grids karras log_snr]
"""

from __future__ import annotations

import argparse
import sys

import torch

from difflab import sampling
from difflab.data import synthetic

CANDIDATES = [("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_2s", {}),
              ("unipc", {"order": 2}), ("unipc", {"order": 3})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--grids", nargs="+", default=["karras", "log_snr"])
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    mix = synthetic("gmm2d")

    def denoiser(x, sigma, **_):
        return mix.denoiser(x, sigma)

    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    ref = sampling.get_sampler("heun")(denoiser, x0, sampling.get_sigmas("log_snr", 400, sigma_min=0.002, sigma_max=80))
    print("| NFE | grid | " + " | ".join(f"{n}{'' if not kw else ' o' + str(kw['order'])}" for n, kw in CANDIDATES) + " |")
    print("|---" * (len(CANDIDATES) + 2) + "|")
    for nfe in a.nfe:
        for grid in a.grids:
            row = []
            for name, kw in CANDIDATES:
                steps = sampling.steps_for_nfe(name, nfe)
                sigmas = sampling.get_sigmas(grid, steps, sigma_min=0.002, sigma_max=80)
                out = sampling.get_sampler(name)(denoiser, x0, sigmas, **kw)
                row.append(f"{float((out - ref).norm(dim=1).mean()):.3f}")
            print(f"| {nfe} | {grid} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
