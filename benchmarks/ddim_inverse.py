"""Our `ddim_inverse` sampler against diffusers' own DDIM inversion loop (DDIMInverseScheduler), same UNet.

    python benchmarks/ddim_inverse.py [--model auto|tiny|bundled] [--steps 50]

Both invert the same processed latent with the same timesteps: diffusers steps `DDIMInverseScheduler`
(set_alpha_to_one, steps_offset 1) with eps from the UNet; ours runs the registered `ddim_inverse`
sampler through the engine's denoiser on the sigmas of those timesteps (VE state x = x_vp sqrt(1 + sigma^2)).
Prints the time ratio and the relative difference of the final latents; also times `ul.unsample(...,
sampler_name="ddim_inverse")` on our own schedule for the user-facing path.
"""
from __future__ import annotations

import argparse
import math
import time

from unsampling_lab.testing import benchmark_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("auto", "tiny", "bundled"), default="auto")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from diffusers import DDIMInverseScheduler

    import unsampling_lab as ul
    from unsampling_lab.guidance import to_conditioning
    from unsampling_lab.guidance import GuidedDenoiser
    from unsampling_lab.samplers import SAMPLER_SPECS

    if "ddim_inverse" not in SAMPLER_SPECS:
        raise SystemExit("the ddim_inverse sampler is not registered yet (unsampling_lab/samplers/registry.py); "
                         "this benchmark runs once it is")
    torch.set_num_threads(args.threads)
    model, latent, what = benchmark_model(args.model)
    unet = model.unet
    x0 = model.latent_format.process_in(latent["samples"]).float()
    cond = to_conditioning(model, "", batch_size=x0.shape[0], name="positive")

    sched = DDIMInverseScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                 clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    sched.set_timesteps(args.steps)

    # diffusers: DDIM inversion loop as the pipelines write it
    t0 = time.perf_counter()
    sample = x0.clone()
    with torch.inference_mode():
        for t in sched.timesteps:
            eps = unet(sample, t, encoder_hidden_states=cond.embeds, return_dict=False)[0]
            sample = sched.step(eps, t, sample).prev_sample
    theirs_s = time.perf_counter() - t0

    # ours: the registered sampler through the engine's denoiser, on the same timesteps as sigmas
    table = model.model_sampling.sigmas.double()
    first = int(sched.timesteps[0]) - 1000 // args.steps
    sigma_start = 0.0 if first < 0 else float(table[first])
    sigmas = torch.tensor([sigma_start] + [float(table[int(t)]) for t in sched.timesteps], dtype=torch.float32)
    denoiser = GuidedDenoiser(model, cond, None, 1.0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ours = SAMPLER_SPECS["ddim_inverse"].fn(denoiser, x0 * math.sqrt(1 + sigma_start**2), sigmas)
    ours_s = time.perf_counter() - t0
    ours_vp = ours / math.sqrt(1 + float(sigmas[-1]) ** 2)
    rel = float((ours_vp - sample).norm() / sample.norm())

    t0 = time.perf_counter()
    ul.unsample(model, latent, steps=args.steps, sampler_name="ddim_inverse", scheduler="ddim_uniform", progress=False)
    engine_s = time.perf_counter() - t0

    print(f"model: {what}; {args.steps} steps; UNet evaluations: {denoiser.counter.nfe} (ours), {len(sched.timesteps)} (diffusers)")
    print(f"{'':34} {'seconds':>8} {'ratio':>7}")
    print(f"{'diffusers DDIMInverseScheduler':34} {theirs_s:>8.3f} {1.0:>7.3f}")
    print(f"{'ddim_inverse sampler, same sigmas':34} {ours_s:>8.3f} {ours_s / theirs_s:>7.3f}")
    print(f"{'ul.unsample(ddim_inverse)':34} {engine_s:>8.3f} {engine_s / theirs_s:>7.3f}   (ddim_uniform schedule)")
    print(f"agreement: ||ours - diffusers|| / ||diffusers|| = {rel:.2e}")


if __name__ == "__main__":
    main()
