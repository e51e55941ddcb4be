"""Unsampler round trips with multistep samplers: where lms, ipndm_v and uni_pc_bh2 blow up, and why.

    python benchmarks/unsampler_multistep.py [--steps 4 10 20 50]

Two models on SD1.5's sigma table ('normal' schedule): the bundled shapes model (4 images) and an exact Gaussian
(closed-form PF-ODE, tests/exact_gaussian.py). For each sampler and step count: the round trip
`ul.resample(ul.unsample(x))` as latent MSE, max |noise|, and the noise's error relative to a reference (the
bundled model: euler at 400 steps; the Gaussian: the exact PF-ODE noise). For the Gaussian also the error without
the Unsampler's first step (1e-4 -> sigma_min + 1e-4), started on the exact state, and, to compare directions,
the sampling run down the same sigmas from the exact noise. Last, lms's step weights on 4 steps both ways:
sum_j |c_j| / |h| (1 for Euler) -- a multistep rule extrapolating over steps that grow.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

SAMPLERS = ("euler", "dpmpp_2m", "ipndm", "lms", "ipndm_v", "uni_pc", "uni_pc_bh2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10, 20, 50])
    args = parser.parse_args()

    import torch

    import unsampling_lab as ul
    from unsampling_lab.engine import UNSAMPLE_SIGMA_OFFSET
    from unsampling_lab.models.analytic import AnalyticModel
    from unsampling_lab.samplers import SAMPLER_SPECS
    from unsampling_lab.samplers.ode import lms_coefficient
    from unsampling_lab.schedulers import sigma_schedule

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from exact_gaussian import DATA, X0, denoise

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the registry's inversion caveats: this is what they are about
    bundled = ul.load_model()
    batch = ul.shapes.make_shapes(4, seed=0)
    gauss = AnalyticModel(lambda x, sigma, label: DATA.denoise(x, sigma[:, None]), dim=4,
                          model_sampling=bundled.model_sampling)
    exact = lambda s: DATA.ode_solution(X0.flatten(1), UNSAMPLE_SIGMA_OFFSET, float(s)).reshape(X0.shape)  # noqa: E731

    def rel(a, b) -> float:
        return float((a - b).norm() / b.norm())

    for what, model, latent, pos in (("bundled model", bundled, bundled.encode(batch.images)["samples"], batch.captions),
                                     ("exact Gaussian, SD1.5 table", gauss, X0, "")):
        run = dict(positive=pos, progress=False)
        ref = exact(bundled.model_sampling.sigmas[-1]) if model is gauss else ul.unsample(model, latent, steps=400, **run)
        print(f"\n{what}: noise reference = {'the exact PF-ODE noise' if model is gauss else 'euler, 400 steps'}")
        print(f"{'sampler':11s} {'steps':>5s} {'latent_mse':>10s} {'max|noise|':>10s} {'noise_err':>9s}"
              + (f" {'no_1st_step':>11s} {'sampling':>9s}" if model is gauss else ""))
        for name in SAMPLERS:
            spec = SAMPLER_SPECS[name]
            for n in args.steps:
                noise = ul.unsample(model, latent, steps=n, sampler_name=name, **run)
                mse = float((ul.resample(model, noise, steps=n, sampler_name=name, **run) - latent).pow(2).mean())
                line = f"{name:11s} {n:5d} {mse:10.3g} {float(noise.abs().max()):10.3g} {rel(noise, ref):9.3g}"
                if model is gauss:  # the sampler alone, on the Unsampler's sigmas, in float64
                    s = sigma_schedule(model.model_sampling, "normal", n, discard_penultimate=spec.discard_penultimate_sigma)
                    up = (s.flip(0) + UNSAMPLE_SIGMA_OFFSET).double()
                    no_first = rel(spec.fn(denoise, exact(up[1]), up[1:]), exact(up[-1]))
                    down = rel(spec.fn(denoise, exact(up[-1]), up.flip(0)), exact(up[0]))
                    line += f" {no_first:11.3g} {down:9.3g}"
                print(line, flush=True)
    up = (sigma_schedule(bundled.model_sampling, "normal", 4).flip(0) + UNSAMPLE_SIGMA_OFFSET).numpy()
    for label, s in (("ascending (unsampling)", up), ("descending (sampling)", up[::-1].copy())):
        amp = [sum(abs(lms_coefficient(s, i, j, min(i + 1, 4))) for j in range(min(i + 1, 4))) / abs(s[i + 1] - s[i])
               for i in range(len(s) - 1)]
        print(f"lms sum|c_j| / |h| per step, 4 steps, {label}: {', '.join(f'{a:.3g}' for a in amp)}")


if __name__ == "__main__":
    main()
