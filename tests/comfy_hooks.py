"""ComfyUI's post-cfg hook, emulated for the CFG++ transcriptions (tests/test_comfy_noise.py, test_comfy_parity.py)."""
from __future__ import annotations


def post_cfg(denoiser):
    """(model, box): each call of `model` returns the guided estimate of `denoiser` and leaves its uncond estimate in
    box["uncond"], as ComfyUI's post-cfg hook hands it to its CFG++ samplers."""
    box = {}

    def model(x, sigma):
        denoised, box["uncond"] = denoiser.with_uncond(x, sigma)
        return denoised

    return model, box
