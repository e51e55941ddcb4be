"""ComfyUI's seeding and stochastic update rules, against independent transcriptions of ComfyUI's own code.

The functions `_comfy_*` below are REFERENCE TRANSCRIPTIONS, read from ComfyUI's comfy/k_diffusion/sampling.py
(`default_noise_sampler`, `BatchedBrownianTree`, `BrownianTreeNoiseSampler`, `sigma_to_half_log_snr`,
`offset_first_sigma_for_snr`, and the samplers named after them), written out plainly. They run on the
denoiser the engine built inside `ul.resample(add_noise=True, noise_seed=s)` (captured), with the noise
built here from the same seed, so equality means: same seed -> ComfyUI's noise -> ComfyUI's result, to the bit.
The models are the exact Gaussian ones (VP and flow), in float32 as in production.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchsde

import unsampling_lab as ul
from unsampling_lab.models.gaussian import GaussianData
from unsampling_lab.models.analytic import gaussian_flow_model, gaussian_model
from unsampling_lab.samplers.base import NoiseSeed
from comfy_hooks import post_cfg

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

DATA = GaussianData(torch.tensor([0.3, -2.0, 1.0, 0.0]), torch.tensor([0.5, 1.0, 0.8, 1.5]))
SEED = 1234


# -- ComfyUI's noise, transcribed ------------------------------------------------------------------------------


def _comfy_default_noise_sampler(x, seed):
    if x.device == torch.device("cpu"):
        seed += 1
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device,
                                                 generator=generator)


class _ComfyBrownian:
    """BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu) with BatchedBrownianTree inlined (one seed)."""

    def __init__(self, x, sigma_min, sigma_max, seed, cpu):
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1 if t0 < t1 else -1
        if self.sign < 0:
            t0, t1 = t1, t0
        w0 = torch.zeros_like(x)
        self.cpu = cpu
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    def __call__(self, sigma, sigma_next):
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        a, b, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        device, dtype = a.device, a.dtype
        if self.cpu:
            a, b = a.detach().cpu().float(), b.detach().cpu().float()
        w = torch.stack([self.tree(a, b)]).to(device=device, dtype=dtype) * (self.sign * sign)
        return w[0] / (t1 - t0).abs().sqrt()


def _brownian(x, sigmas, seed, cpu=True):
    return _ComfyBrownian(x, sigmas[sigmas > 0].min(), sigmas.max(), seed, cpu)


def test_gaussian_stream_is_comfyuis():
    x = torch.zeros(2, 4, 3, 3)
    ours, theirs = NoiseSeed(SEED).gaussian(x), _comfy_default_noise_sampler(x, SEED)
    s = torch.tensor(1.0)
    for _ in range(3):
        assert torch.equal(ours(s, s), theirs(s, s))
    # seed + 1 on the CPU: the per-step stream is not the starting noise (prepare_noise draws from `seed`)
    first = NoiseSeed(SEED).gaussian(x)(s, s)
    assert not torch.equal(first, torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED)))


@pytest.mark.parametrize("cpu", [True, False])
def test_brownian_stream_is_comfyuis(cpu):
    x = torch.zeros(1, 4, 2, 2)
    sigmas = torch.tensor([14.6, 7.0, 2.5, 0.9, 0.1, 0.0])
    ours, theirs = NoiseSeed(SEED).brownian(x, sigmas, cpu=cpu), _brownian(x, sigmas, SEED, cpu)
    for i in range(len(sigmas) - 2):
        a, b = sigmas[i], sigmas[i + 1]
        n = ours(a, b)
        assert torch.equal(n, theirs(a, b))
        assert torch.equal(ours(a, (a + b) / 2), theirs(a, (a + b) / 2))  # a sub-interval (dpmpp_sde's stage)
    assert 0.3 < float(n.std()) < 3  # standard normal per element (16 of them)


# -- ComfyUI's samplers, transcribed (the branches they take on our models) -----------------------------------


def _s_in(x):
    return x.new_ones([x.shape[0]])


def _ancestral_step(sigma_from, sigma_to, eta=1.0):
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def _comfy_euler_ancestral(model, x, sigmas, ns, flow):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if flow:
            if sigmas[i + 1] == 0:
                x = denoised
            else:
                downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * 1.0
                sigma_down = sigmas[i + 1] * downstep_ratio
                alpha_ip1, alpha_down = 1 - sigmas[i + 1], 1 - sigma_down
                renoise_coeff = (sigmas[i + 1] ** 2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2) ** 0.5
                sigma_down_i_ratio = sigma_down / sigmas[i]
                x = sigma_down_i_ratio * x + (1 - sigma_down_i_ratio) * denoised
                x = (alpha_ip1 / alpha_down) * x + ns(sigmas[i], sigmas[i + 1]) * 1.0 * renoise_coeff
            continue
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = denoised
        else:
            d = (x - denoised) / sigmas[i]
            x = x + d * (sigma_down - sigmas[i]) + ns(sigmas[i], sigmas[i + 1]) * 1.0 * sigma_up
    return x


def _lambda(sigma, flow):
    return sigma.logit().neg() if flow else sigma.log().neg()


def _offset(sigmas, ms, flow):
    if flow and len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = ms.percent_to_sigma(1e-4)
    return sigmas


def _comfy_dpmpp_2m_sde(model, x, sigmas, ns, flow, ms, eta=1.0):
    sigmas = _offset(sigmas, ms, flow)
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = _lambda(sigmas[i], flow), _lambda(sigmas[i + 1], flow)
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * 1.0
        old_denoised, h_last = denoised, h
    return x


def _comfy_dpmpp_sde(model, x, sigmas, ns, flow, ms, eta=1.0, r=0.5):
    sigmas = _offset(sigmas, ms, flow)
    sigma_fn = (lambda lam: lam.neg().sigmoid()) if flow else (lambda lam: lam.neg().exp())
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = _lambda(sigmas[i], flow), _lambda(sigmas[i + 1], flow)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_fn(lambda_s_1)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        sd, su = _ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        x_2 = x_2 + alpha_s_1 * ns(sigmas[i], sigma_s_1) * 1.0 * su
        denoised_2 = model(x_2, sigma_s_1 * _s_in(x))
        sd, su = _ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        x = x + alpha_t * ns(sigmas[i], sigmas[i + 1]) * 1.0 * su
    return x


def _comfy_lcm(model, x, sigmas, ns, flow):
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] > 0:
            n = ns(sigmas[i], sigmas[i + 1])
            s = sigmas[i + 1]
            x = s * n + (1.0 - s) * x if flow else n * s + x  # CONST / EPS noise_scaling
    return x


def _comfy_ddpm(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        xv, eps = x / torch.sqrt(1.0 + sigma**2.0), (x - denoised) / sigma
        ac, ac_prev = 1 / ((sigma * sigma) + 1), 1 / ((sigma_prev * sigma_prev) + 1)
        alpha = ac / ac_prev
        mu = (1.0 / alpha).sqrt() * (xv - (1 - alpha) * eps / (1 - ac).sqrt())
        if sigma_prev > 0:
            mu += ((1 - alpha) * (1.0 - ac_prev) / (1.0 - ac)).sqrt() * ns(sigma, sigma_prev)
        x = mu
        if sigmas[i + 1] != 0:
            x *= torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x


def _comfy_seeds_2(model, x, sigmas, ns, flow, ms, eta=1.0, r=0.5, solver_type="phi_1"):
    sigmas = _offset(sigmas, ms, flow)
    sigma_fn = (lambda lam: lam.neg().sigmoid()) if flow else (lambda lam: lam.neg().exp())
    inject = eta > 0
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = _lambda(sigmas[i], flow), _lambda(sigmas[i + 1], flow)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = sigma_fn(lambda_s_1)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        x_2 = sigma_s_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_s_1 * torch.expm1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * ns(sigmas[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * 1.0
        denoised_2 = model(x_2, sigma_s_1 * _s_in(x))
        if solver_type == "phi_1":
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * torch.expm1(-h_eta) * torch.lerp(
                denoised, denoised_2, fac)
        else:
            b2 = ((torch.expm1(-h_eta) - (-h_eta)) / (-h_eta)) / r
            b1 = torch.expm1(-h_eta) - b2
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            segment_factor = (r - 1) * h * eta
            sde_noise = sde_noise * segment_factor.exp()
            sde_noise = sde_noise + segment_factor.mul(2).expm1().neg().sqrt() * ns(sigma_s_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * 1.0
    return x


def _comfy_heunpp2(model, x, sigmas):
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i] * (0.0 + 1)
        denoised = model(x, sigma_hat * _s_in(x))
        d = (x - denoised) / sigma_hat
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * _s_in(x))) / sigmas[i + 1]
            w = 2 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w1 = 1 - w2
            x = x + (d * w1 + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * _s_in(x))) / sigmas[i + 1]
            dt_2 = sigmas[i + 2] - sigmas[i + 1]
            x_3 = x_2 + d_2 * dt_2
            d_3 = (x_3 - model(x_3, sigmas[i + 2] * _s_in(x))) / sigmas[i + 2]
            w = 3 * sigmas[0]
            w2, w3 = sigmas[i + 1] / w, sigmas[i + 2] / w
            w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


def _rf_split(sigma, sigma_next, eta=1.0):
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_ip1, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise_coeff = (sigma_next**2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2) ** 0.5
    return sigma_down, alpha_ip1, alpha_down, renoise_coeff


def _comfy_dpm_2_ancestral(model, x, sigmas, ns, flow):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if flow:
            sigma_down, alpha_ip1, alpha_down, renoise_coeff = _rf_split(sigmas[i], sigmas[i + 1])
        else:
            sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1])
        d = (x - denoised) / sigmas[i]
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigmas[i])
        d_2 = (x_2 - model(x_2, sigma_mid * _s_in(x))) / sigma_mid
        x = x + d_2 * (sigma_down - sigmas[i])
        if flow:
            x = (alpha_ip1 / alpha_down) * x + ns(sigmas[i], sigmas[i + 1]) * 1.0 * renoise_coeff
        else:
            x = x + ns(sigmas[i], sigmas[i + 1]) * 1.0 * sigma_up
    return x


def _comfy_dpmpp_2s_ancestral(model, x, sigmas, ns, flow):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if flow:
            sigma_down, alpha_ip1, alpha_down, renoise_coeff = _rf_split(sigmas[i], sigmas[i + 1])
            if sigmas[i + 1] == 0:
                x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
            else:
                if sigmas[i] == 1.0:
                    sigma_s = 0.9999
                else:
                    lam = lambda sg: ((1 - sg) / sg).log()  # noqa: E731
                    t_i, t_down = lam(sigmas[i]), lam(sigma_down)
                    sigma_s = ((t_i + 0.5 * (t_down - t_i)).exp() + 1) ** -1
                ratio = sigma_s / sigmas[i]
                u = ratio * x + (1 - ratio) * denoised
                D_i = model(u, sigma_s * _s_in(x))
                ratio = sigma_down / sigmas[i]
                x = ratio * x + (1 - ratio) * D_i
            if sigmas[i + 1] > 0:
                x = (alpha_ip1 / alpha_down) * x + ns(sigmas[i], sigmas[i + 1]) * 1.0 * renoise_coeff
            continue
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp() * _s_in(x))
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + ns(sigmas[i], sigmas[i + 1]) * 1.0 * sigma_up
    return x


def _comfy_exp_coeffs(s, t, solver_order, tau_t):
    tau_mul = 1 + tau_t**2
    h = t - s
    p = torch.arange(solver_order, dtype=s.dtype, device=s.device)
    product_terms_factored = t**p - s**p * (-tau_mul * h).exp()
    recursive_depth_mat = p.unsqueeze(1) - p.unsqueeze(0)
    log_factorial = (p + 1).lgamma()
    recursive_coeff_mat = log_factorial.unsqueeze(1) - log_factorial.unsqueeze(0)
    if tau_t > 0:
        recursive_coeff_mat = recursive_coeff_mat - (recursive_depth_mat * math.log(tau_mul))
    signs = torch.where(recursive_depth_mat % 2 == 0, 1.0, -1.0)
    recursive_coeff_mat = (recursive_coeff_mat.exp() * signs).tril()
    return recursive_coeff_mat @ product_terms_factored


def _comfy_b_coeffs(sigma_next, curr_lambdas, lambda_s, lambda_t, tau_t):
    n = curr_lambdas.shape[0]
    lagrange = torch.linalg.solve(torch.vander(curr_lambdas, n, increasing=True).T,
                                  _comfy_exp_coeffs(lambda_s, lambda_t, n, tau_t))
    return sigma_next * lambda_t.exp() * lagrange


def _comfy_sa_solver(model, x, sigmas, ns, flow, ms, use_pece, predictor_order=3, corrector_order=4):
    sigmas = _offset(sigmas, ms, flow)
    lambdas = _lambda(sigmas, flow)
    start_sigma, end_sigma = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)
    tau_func = lambda sg: 1.0 if start_sigma >= sg.item() >= end_sigma else 0.0  # noqa: E731
    max_used_order = max(predictor_order, corrector_order)
    x_pred, h, tau_t, noise, pred_list = x, 0.0, 0.0, 0.0, []
    lower_order_to_end = sigmas[-1].item() == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i] * _s_in(x))
        pred_list.append(denoised)
        pred_list = pred_list[-max_used_order:]
        predictor_order_used = min(predictor_order, len(pred_list))
        if i == 0 or (sigmas[i + 1] == 0 and not use_pece):
            corrector_order_used = 0
        else:
            corrector_order_used = min(corrector_order, len(pred_list))
        if lower_order_to_end:
            predictor_order_used = min(predictor_order_used, len(sigmas) - 2 - i)
            corrector_order_used = min(corrector_order_used, len(sigmas) - 1 - i)
        if corrector_order_used == 0:
            x = x_pred
        else:
            b = _comfy_b_coeffs(sigmas[i], lambdas[i - corrector_order_used + 1:i + 1], lambdas[i - 1], lambdas[i], tau_t)
            corr_res = torch.tensordot(torch.stack(pred_list[-corrector_order_used:], dim=1), b, dims=([1], [0]))
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t**2) * h).exp() * x + corr_res
            if tau_t > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i] * _s_in(x))
                pred_list[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = _comfy_b_coeffs(sigmas[i + 1], lambdas[i - predictor_order_used + 1:i + 1], lambdas[i],
                                lambdas[i + 1], tau_t)
            pred_res = torch.tensordot(torch.stack(pred_list[-predictor_order_used:], dim=1), b, dims=([1], [0]))
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t**2) * h).exp() * x + pred_res
            if tau_t > 0:
                noise = ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * tau_t**2 * h).expm1().neg().sqrt() * 1.0
                x_pred = x_pred + noise
    return x_pred


CASES = {
    # name: (transcription(model, x, sigmas, seed, flow, ms), noise kind)
    "euler_ancestral": lambda m, x, s, seed, flow, ms: _comfy_euler_ancestral(
        m, x, s, _comfy_default_noise_sampler(x, seed), flow),
    "lcm": lambda m, x, s, seed, flow, ms: _comfy_lcm(m, x, s, _comfy_default_noise_sampler(x, seed), flow),
    "ddpm": lambda m, x, s, seed, flow, ms: _comfy_ddpm(m, x, s, _comfy_default_noise_sampler(x, seed)),
    "dpmpp_2m_sde": lambda m, x, s, seed, flow, ms: _comfy_dpmpp_2m_sde(m, x, s, _brownian(x, s, seed), flow, ms),
    "dpmpp_2m_sde_gpu": lambda m, x, s, seed, flow, ms: _comfy_dpmpp_2m_sde(
        m, x, s, _brownian(x, s, seed, cpu=False), flow, ms),
    "dpmpp_sde": lambda m, x, s, seed, flow, ms: _comfy_dpmpp_sde(m, x, s, _brownian(x, s, seed), flow, ms),
    "seeds_2": lambda m, x, s, seed, flow, ms: _comfy_seeds_2(m, x, s, _comfy_default_noise_sampler(x, seed), flow, ms),
    "exp_heun_2_x0_sde": lambda m, x, s, seed, flow, ms: _comfy_seeds_2(
        m, x, s, _comfy_default_noise_sampler(x, seed), flow, ms, r=1.0, solver_type="phi_2"),
    # deterministic, but its flow form (half-logSNR, offset first sigma) is new: same transcription at eta 0
    "heunpp2": lambda m, x, s, seed, flow, ms: _comfy_heunpp2(m, x, s),
    "sa_solver": lambda m, x, s, seed, flow, ms: _comfy_sa_solver(
        m, x, s, _comfy_default_noise_sampler(x, seed), flow, ms, use_pece=False),
    "sa_solver_pece": lambda m, x, s, seed, flow, ms: _comfy_sa_solver(
        m, x, s, _comfy_default_noise_sampler(x, seed), flow, ms, use_pece=True),
    "dpm_2_ancestral": lambda m, x, s, seed, flow, ms: _comfy_dpm_2_ancestral(
        m, x, s, _comfy_default_noise_sampler(x, seed), flow),
    "dpmpp_2s_ancestral": lambda m, x, s, seed, flow, ms: _comfy_dpmpp_2s_ancestral(
        m, x, s, _comfy_default_noise_sampler(x, seed), flow),
    "exp_heun_2_x0": lambda m, x, s, seed, flow, ms: _comfy_seeds_2(m, x, s, None, flow, ms, eta=0.0, r=1.0,
                                                                    solver_type="phi_2"),
}


def _captured_resample(model, sampler, monkeypatch):
    """ul.resample from pure noise with a noise seed; returns (denoiser, x, sigmas, our output) of the sampler run."""
    import unsampling_lab.engine as engine

    runs, run = [], engine.run_sampler

    def recording(spec, denoiser, x, sigmas, **kwargs):
        out = run(spec, denoiser, x, sigmas, **kwargs)
        runs.append((denoiser, x.clone(), sigmas.clone(), out))
        return out

    monkeypatch.setattr(engine, "run_sampler", recording)
    latent = torch.zeros(3, 4, 1, 1)
    ul.resample(model, {"samples": latent}, steps=12, sampler_name=sampler, scheduler="simple", add_noise=True,
                noise_seed=SEED, progress=False)
    (denoiser, x, sigmas, out), = runs
    return denoiser, x, sigmas, out


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("sampler", list(CASES))
def test_stochastic_sampler_is_comfyuis_bit_for_bit(sampler, family, monkeypatch):
    if sampler == "ddpm" and family == "flow":
        pytest.skip("ddpm is refused on flow models")
    flow = family == "flow"
    model = gaussian_flow_model(DATA) if flow else gaussian_model(DATA)
    model.dtype = torch.float32
    denoiser, x, sigmas, ours = _captured_resample(model, sampler, monkeypatch)
    assert x.dtype == sigmas.dtype == torch.float32
    with torch.inference_mode():
        theirs = CASES[sampler](denoiser, x, sigmas, SEED, flow, model.model_sampling)
    assert torch.equal(ours, theirs), float((ours - theirs).abs().max())


def test_flow_resample_refuses_ddpm():
    with pytest.raises(ul.UnsamplingError, match="no form for flow"):
        ul.resample(gaussian_flow_model(DATA), {"samples": torch.zeros(1, 4, 1, 1)}, steps=4, sampler_name="ddpm",
                    add_noise=True, progress=False)


# -- CFG++ samplers, with real guidance (a labelled Gaussian mixture: cond != uncond) ------------------------------


def _comfy_euler_ancestral_cfg_pp(denoiser, x, sigmas, ns, flow, eta):
    model, box = post_cfg(denoiser)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * _lambda(sigmas[i], flow).exp()
        alpha_t = sigmas[i + 1] * _lambda(sigmas[i + 1], flow).exp()
        d = (x - alpha_s * box["uncond"]) / sigmas[i]
        sigma_down, sigma_up = (_ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta) if eta
                                else (sigmas[i + 1] / alpha_t, 0.0))
        sigma_down = alpha_t * sigma_down
        x = alpha_t * denoised + sigma_down * d
        if eta > 0:
            x = x + alpha_t * ns(sigmas[i], sigmas[i + 1]) * 1.0 * sigma_up
    return x


def _comfy_dpmpp_2m_cfg_pp(denoiser, x, sigmas):
    model, box = post_cfg(denoiser)
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        uncond = box["uncond"]
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


def _comfy_res_multistep_cfg_pp(denoiser, x, sigmas):
    model, box = post_cfg(denoiser)
    old_denoised = old_sigma_down = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        uncond = box["uncond"]
        sigma_down = sigmas[i + 1]  # eta 0
        if sigma_down == 0 or old_denoised is None:
            x = denoised + (x - uncond) / sigmas[i] * sigma_down
        else:
            t, t_old, t_next, t_prev = (s.log().neg() for s in (sigmas[i], old_sigma_down, sigma_down, sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1, b2 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0), torch.nan_to_num(phi2 / c2, nan=0.0)
            x = x + (denoised - uncond)
            x = h.neg().exp() * x + h * (b1 * uncond + b2 * old_denoised)
        old_denoised, old_sigma_down = uncond, sigma_down
    return x


def _comfy_gradient_estimation_cfg_pp(denoiser, x, sigmas, ge_gamma=2.0):
    model, box = post_cfg(denoiser)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = (x - box["uncond"]) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1]
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


CFG_PP = {
    "euler_cfg_pp": lambda m, x, s, seed, flow: _comfy_euler_ancestral_cfg_pp(m, x, s, None, flow, 0.0),
    "euler_ancestral_cfg_pp": lambda m, x, s, seed, flow: _comfy_euler_ancestral_cfg_pp(
        m, x, s, _comfy_default_noise_sampler(x, seed), flow, 1.0),
    "dpmpp_2m_cfg_pp": lambda m, x, s, seed, flow: _comfy_dpmpp_2m_cfg_pp(m, x, s),
    "res_multistep_cfg_pp": lambda m, x, s, seed, flow: _comfy_res_multistep_cfg_pp(m, x, s),
    "gradient_estimation_cfg_pp": lambda m, x, s, seed, flow: _comfy_gradient_estimation_cfg_pp(m, x, s),
}


def _mixture():
    from unsampling_lab.models.analytic import mixture_model
    from unsampling_lab.models.gaussian import GaussianMixture

    mix = GaussianMixture(means=torch.tensor([[2.0, 0.0, 1.0, -1.0], [-2.0, 1.0, 0.0, 1.0]]),
                          stds=torch.tensor([0.5, 0.7]), weights=torch.tensor([1.0, 1.0]))
    model = mixture_model(mix, labels=["a", "b"])
    model.dtype = torch.float32
    return model


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("sampler", list(CFG_PP))
def test_cfg_pp_sampler_is_comfyuis_bit_for_bit(sampler, cfg, monkeypatch):
    """With guidance (prompt "a" against the mixture), and at cfg 1, where ComfyUI still runs the uncond pass."""
    import unsampling_lab.engine as engine

    runs, run = [], engine.run_sampler

    def recording(spec, denoiser, x, sigmas, **kwargs):
        out = run(spec, denoiser, x, sigmas, **kwargs)
        runs.append((denoiser, x.clone(), sigmas.clone(), out))
        return out

    monkeypatch.setattr(engine, "run_sampler", recording)
    model = _mixture()
    ul.resample(model, {"samples": torch.zeros(3, 4, 1, 1)}, steps=10, cfg=cfg, sampler_name=sampler,
                scheduler="karras", positive="a", negative="", add_noise=True, noise_seed=SEED, progress=False)
    (denoiser, x, sigmas, ours), = runs
    with torch.inference_mode():
        cond_and_uncond = denoiser.with_uncond(x, sigmas[0] * _s_in(x))
        theirs = CFG_PP[sampler](denoiser, x, sigmas, SEED, False)
    assert not torch.allclose(*cond_and_uncond)  # the uncond pass ran and differs, even at cfg 1
    assert torch.equal(ours, theirs), float((ours - theirs).abs().max())
