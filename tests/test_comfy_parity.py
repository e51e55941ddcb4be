"""Parity with ComfyUI's own Unsampler and KSamplerAdvanced on the same tiny seeded UNet.

The reference outputs were produced by ComfyUI itself (tests/data/comfy_reference/README.md). Our
UNet forward is diffusers', ComfyUI's is its own: their last-bit differences are amplified by the
Unsampler's first step ((x - denoised) / 1e-4 cancels in float32) and by cfg. Measured: <= 2e-5
relative at cfg 1, <= 1.2e-4 at cfg 4 (unsample), <= 1.2e-5 for the resamples.
"""
from __future__ import annotations

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.model_sampling import ModelSampling
from unsampling_lab.samplers import get_sampler
from comfy_hooks import post_cfg

TOL = {1.0: 1e-4}
TOL_CFG = 2e-4  # cfg > 1 multiplies the cond/uncond rounding difference (see module docstring)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _conds(inputs):
    return [[inputs["positive"], {}]], [[inputs["negative"], {}]]


def _run_case(comfy_reference, case):
    """Our output for one reference case (the same node call ComfyUI made)."""
    model, inputs, outputs = comfy_reference["model"], comfy_reference["inputs"], comfy_reference["outputs"]
    positive, negative = _conds(inputs)
    p = case["params"]
    if case["kind"] in ("unsample", "unsample_mask"):
        latent = {"samples": inputs["latent"]}
        if p["noise_mask"]:
            latent["noise_mask"] = inputs["mask"]
        return ul.unsample(model, latent, steps=p["steps"], end_at_step=p["end_at_step"], cfg=p["cfg"],
                           sampler_name=p["sampler_name"], scheduler=p["scheduler"], normalize=p["normalize"],
                           positive=positive, negative=negative, progress=False)["samples"]
    return ul.resample(model, {"samples": outputs[case["input_key"]]}, steps=p["steps"],
                       start_at_step=p["start_at_step"], end_at_step=p["end_at_step"], cfg=p["cfg"],
                       sampler_name=p["sampler_name"], scheduler=p["scheduler"], positive=positive, negative=negative,
                       add_noise=p["add_noise"], noise_seed=p["noise_seed"],
                       return_with_leftover_noise=p["return_with_leftover_noise"], progress=False)["samples"]


def test_every_reference_case(comfy_reference, two_threads):
    """Every reference case with the 2 torch threads ComfyUI ran with. Measured here (torch 2.13 CPU, MKL): euler
    is not bit-exact (relative L2 1.2e-5 at cfg 1, 1.1e-4 at cfg 4, the same with 1 thread): the remaining
    difference is the UNet's (diffusers' forward vs ComfyUI's), not the sampler's or the thread count's."""
    model, outputs = comfy_reference["model"], comfy_reference["outputs"]
    checked, worst = 0, {}
    for case in comfy_reference["cases"]:
        p = case["params"]
        if case["kind"] in ("unsample", "unsample_mask"):
            sigmas = ul.unsample_sigmas(model, steps=p["steps"], end_at_step=p["end_at_step"],
                                        sampler_name=p["sampler_name"], scheduler=p["scheduler"])
            torch.testing.assert_close(sigmas, torch.tensor(case["unsample_sigmas"]), rtol=1e-6, atol=1e-7)
        rel = _rel(_run_case(comfy_reference, case), outputs[case["output_key"]])
        tol = TOL_CFG if (p["cfg"] != 1.0 and case["kind"] != "resample") else 1e-4
        worst[case["id"]] = rel
        assert rel < tol, f"{case['id']}: relative L2 {rel:.2e} >= {tol:.0e}"
        checked += 1
    assert checked == len(comfy_reference["cases"]) >= 45


def test_masked_unsample_keeps_the_unmasked_region(comfy_reference):
    model, inputs = comfy_reference["model"], comfy_reference["inputs"]
    mask = (inputs["mask"] > 0.5).float()
    out = ul.unsample(model, {"samples": inputs["latent"], "noise_mask": mask}, steps=10, progress=False,
                      positive=_conds(inputs)[0])
    keep = mask.expand_as(inputs["latent"]) == 0
    assert keep.any()
    assert torch.equal(out["samples"][keep], inputs["latent"][keep])
    assert not torch.allclose(out["samples"][~keep], inputs["latent"][~keep])


@pytest.mark.parametrize("table", ["sd15_discrete_eps", "flow_discrete_shift3_sd3", "flux_shift1.15"])
def test_scheduler_sigmas_match_comfyui(comfy_reference, table):
    ms = {"sd15_discrete_eps": ModelSampling.discrete(), "flow_discrete_shift3_sd3": ModelSampling.flow(shift=3.0),
          "flux_shift1.15": ModelSampling.flux(shift=1.15)}[table]
    reference = comfy_reference["sigmas"]
    assert [ms.sigma_min, ms.sigma_max] == pytest.approx(reference[f"{table}_sigma_min_max"], rel=1e-7)
    for scheduler, by_steps in reference["schedules"][table].items():
        for steps, expected in by_steps.items():
            ours = ul.calculate_sigmas(ms, scheduler, int(steps))
            expected = torch.tensor(expected)
            if expected.isnan().any():  # ComfyUI's kl_optimal at 1 step is [nan, 0]; ours is finite
                assert scheduler == "kl_optimal" and int(steps) == 1 and torch.isfinite(ours).all()
                continue
            torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-8, msg=f"{table} {scheduler} {steps}")


def test_sd15_table_matches_comfyui_exactly(comfy_reference):
    expected = torch.tensor(comfy_reference["sigmas"]["sd15_model_sigmas_1000"])
    assert torch.equal(ModelSampling.discrete().sigmas, expected)


def test_comfyui_failures_are_not_reproduced(comfy_reference):
    """ComfyUI: ddim errors inside the Unsampler; uni_pc returns NaN. Ours: finite results."""
    model, inputs = comfy_reference["model"], comfy_reference["inputs"]
    latent = {"samples": inputs["latent"]}
    for sampler in ("ddim", "uni_pc", "uni_pc_bh2"):
        if sampler not in ul.SAMPLERS:
            pytest.skip(f"{sampler} not registered")
        out = ul.unsample(model, latent, steps=10, sampler_name=sampler, positive=_conds(inputs)[0], progress=False)
        assert torch.isfinite(out["samples"]).all(), sampler
    ddim = ul.unsample(model, latent, steps=10, sampler_name="ddim", positive=_conds(inputs)[0], progress=False)
    euler = ul.unsample(model, latent, steps=10, sampler_name="euler", positive=_conds(inputs)[0], progress=False)
    assert torch.equal(ddim["samples"], euler["samples"])  # ComfyUI's ddim is euler


# -- every deterministic sampler against a transcription of ComfyUI's update rules -----------------------------
#
# The reference outputs only cover euler and dpmpp_2m. For the other samplers, the functions `_comfy_*`
# below are REFERENCE TRANSCRIPTIONS: ComfyUI's per-step arithmetic (comfy/k_diffusion/sampling.py,
# comfy/k_diffusion/deis.py, comfy/extra_samplers/uni_pc.py) written out plainly as float32 tensor ops on the
# 0-d `sigmas[i]`, in ComfyUI's order. They run on the very denoiser the engine built (captured from
# `ul.unsample` / `ul.resample`), so any difference is sampler arithmetic alone.

def _s_in(x):
    return x.new_ones([x.shape[0]])


def _comfy_euler(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def _comfy_heun(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * _s_in(x))) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def _comfy_dpm_2(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = (x - denoised) / sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = (x_2 - model(x_2, sigma_mid * _s_in(x))) / sigma_mid
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def _comfy_lms(model, x, sigmas, order=4):
    from scipy import integrate

    t = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        ds = (ds + [(x - denoised) / sigmas[i]])[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        cur = min(i + 1, order)

        def coeff(j):
            def fn(tau):
                prod = 1.0
                for k in range(cur):
                    if k != j:
                        prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
                return prod
            return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]

        x = x + sum(coeff(j) * d for j, d in zip(range(cur), reversed(ds)))
    return x


def _comfy_dpmpp_2m(model, x, sigmas):
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old is not None and sigmas[i + 1] != 0:
            r = (t - sigmas[i - 1].log().neg()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        else:
            denoised_d = denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_d
        old = denoised
    return x


def _comfy_ipndm(model, x, sigmas):
    buf = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * _s_in(x))
        d = (x - denoised) / t_cur
        order = min(4, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d
        elif order == 2:
            x_next = x + (t_next - t_cur) * (3 * d - buf[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t_cur) * (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        else:
            x_next = x + (t_next - t_cur) * (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
        buf = (buf + [d])[-3:]
        x = x_next
    return x


def _comfy_ipndm_v(model, x, sigmas):
    t, buf = sigmas, []
    for i in range(len(sigmas) - 1):
        denoised = model(x, t[i] * _s_in(x))
        d = (x - denoised) / t[i]
        order = min(4, i + 1)
        dt = t[i + 1] - t[i]
        if t[i + 1] == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + dt * d
        else:
            hn, hn1 = t[i + 1] - t[i], t[i] - t[i - 1]
            if order == 2:
                c = [(2 + (hn / hn1)) / 2, -(hn / hn1) / 2]
            else:
                hn2 = t[i - 1] - t[i - 2]
                tmp1 = (1 - hn / (3 * (hn + hn1)) * (hn * (hn + hn1)) / (hn1 * (hn1 + hn2))) / 2
                if order == 3:
                    c = [(2 + (hn / hn1)) / 2 + tmp1, -(hn / hn1) / 2 - (1 + hn1 / hn2) * tmp1, tmp1 * hn1 / hn2]
                else:
                    hn3 = t[i - 2] - t[i - 3]
                    qq = (hn1 * (hn1 + hn2) / (hn2 * (hn2 + hn3)))
                    tmp2 = ((1 - hn / (3 * (hn + hn1))) / 2 + (1 - hn / (2 * (hn + hn1))) * hn / (6 * (hn + hn1 + hn2))) \
                        * (hn * (hn + hn1) * (hn + hn1 + hn2)) / (hn1 * (hn1 + hn2) * (hn1 + hn2 + hn3))
                    c = [(2 + (hn / hn1)) / 2 + tmp1 + tmp2,
                         -(hn / hn1) / 2 - (1 + hn1 / hn2) * tmp1 - (1 + (hn1 / hn2) + qq) * tmp2,
                         tmp1 * hn1 / hn2 + ((hn1 / hn2) + qq * (1 + hn2 / hn3)) * tmp2,
                         -tmp2 * qq * hn1 / hn2]
            x_next = x + dt * sum(ci * g for ci, g in zip(c, [d] + buf[::-1]))
        buf = (buf + [d])[-3:]
        x = x_next
    return x


def _comfy_deis_table(sigmas, max_order=3, N=10000):
    import numpy as np

    # edm2t(edm_steps, epsilon_s=1e-3, sigma_min=0.002, sigma_max=80): sigma_max is an int, so torch.tensor(80) is
    # int64 and NumPy's log of 80**2 + 1 is float64; sigma_min's is float32 (np.log of a tensor gives a tensor back)
    eps_s = 1e-3
    log_min = torch.from_numpy(np.asarray(np.log((torch.tensor(0.002) ** 2 + 1).numpy())))
    log_max = torch.from_numpy(np.asarray(np.log((torch.tensor(80) ** 2 + 1).numpy())))
    beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    beta_min = log_max - 0.5 * beta_d
    t = ((beta_min ** 2 + 2 * beta_d * (sigmas.cpu() ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    beta_0, beta_1 = beta_min, beta_d + beta_min
    table = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] <= 0:
            table.append([])
            continue
        taus = torch.linspace(t[i], t[i + 1], N)
        dtau = (t[i + 1] - t[i]) / N
        prev = t[[i - k for k in range(order)]]
        with torch.inference_mode(False), torch.enable_grad():
            tau = taus.clone().requires_grad_(True)
            alpha = torch.exp(-0.5 * tau ** 2 * (beta_1.clone() - beta_0.clone()) - tau * beta_0.clone())
            alpha.log().sum().backward()
            integrand = -0.5 * tau.grad / torch.sqrt(alpha.detach() * (1 - alpha.detach()))
        row = []
        for j in range(order):
            poly = 1
            for k in range(order):
                if k != j:
                    poly *= (taus - prev[k]) / (prev[j] - prev[k])
            row.append(torch.sum(integrand * poly) * dtau)
        table.append(row)
    return table


def _comfy_deis(model, x, sigmas):
    table, buf = _comfy_deis_table(sigmas), []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = (x - denoised) / sigmas[i]
        order = 1 if sigmas[i + 1] <= 0 else min(3, i + 1)
        if order == 1:
            x_next = x + (sigmas[i + 1] - sigmas[i]) * d
        elif order == 2:
            x_next = x + table[i][0] * d + table[i][1] * buf[-1]
        else:
            x_next = x + table[i][0] * d + table[i][1] * buf[-1] + table[i][2] * buf[-2]
        buf = (buf + [d])[-2:]
        x = x_next
    return x


def _comfy_res_multistep(model, x, sigmas):
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0 or old is None:
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next, t_prev = sigmas[i].log().neg(), sigmas[i + 1].log().neg(), sigmas[i - 1].log().neg()
            h = t_next - t
            c2 = (t_prev - t) / h
            phi1 = torch.expm1(-h) / (-h)
            phi2 = (phi1 - 1.0) / (-h)
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            x = h.neg().exp() * x + h * (b1 * denoised + b2 * old)
        old = denoised
    return x


def _comfy_gradient_estimation(model, x, sigmas, ge_gamma=2.0):
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def _comfy_exp_heun_2_x0(model, x, sigmas, r=1.0, eta=0.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = lambda_s_1.neg().exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        x_2 = sigma_s_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_s_1 * torch.expm1(-r * h_eta) * denoised
        denoised_2 = model(x_2, sigma_s_1 * _s_in(x))
        b2 = ((torch.expm1(-h_eta) - (-h_eta)) / (-h_eta)) / r
        b1 = torch.expm1(-h_eta) - b2
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
    return x


def _comfy_uni_pc(model, x, sigmas, variant):
    """ComfyUI's UniPC in its VP variables (SigmaConvert, predict_eps_sigma); NaN at sigma 1e-4 in float32."""
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001
    lmc = lambda s: 0.5 * torch.log(1 / ((s * s) + 1))  # noqa: E731
    alpha = lambda s: torch.exp(lmc(s))  # noqa: E731
    std = lambda s: torch.sqrt(1.0 - torch.exp(2.0 * lmc(s)))  # noqa: E731
    lam = lambda s: lmc(s) - 0.5 * torch.log(1.0 - torch.exp(2.0 * lmc(s)))  # noqa: E731

    def data_pred(xv, s):
        inp = xv * ((s ** 2 + 1.0) ** 0.5)
        eps = (inp - model(inp, s * _s_in(xv))) / s
        return (xv - std(s) * eps) / alpha(s)

    def update(xv, ms, tl, t, order, use_corrector):
        t0, m0 = tl[-1], ms[-1]
        h = lam(t) - lam(t0)
        rks = [(lam(tl[-(i + 1)]) - lam(t0)) / h for i in range(1, order)]
        d1s = [(ms[-(i + 1)] - m0) / rk for i, rk in zip(range(1, order), rks)]
        rks = torch.stack(rks + [torch.ones_like(h)])
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if variant == "bh1" else torch.expm1(hh)
        R, b, f = [], [], 1
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * f / B_h)
            f *= i + 1
            h_phi_k = h_phi_k / hh - 1 / f
        R, b = torch.stack(R), torch.stack(b)
        D1s = torch.stack(d1s, dim=1) if d1s else None
        x_t_ = (std(t) / std(t0)) * xv - (alpha(t) * h_phi_1) * m0
        pred = 0 if D1s is None else torch.einsum(
            "k,bkchw->bchw", torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]), D1s)
        x_t = x_t_ - (alpha(t) * B_h) * pred
        model_t = None
        if use_corrector:
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
            model_t = data_pred(x_t, t)
            corr = 0 if D1s is None else torch.einsum("k,bkchw->bchw", rhos_c[:-1], D1s)
            x_t = x_t_ - (alpha(t) * B_h) * (corr + rhos_c[-1] * (model_t - m0))
        return x_t, model_t

    steps = len(ts) - 1
    order = min(3, steps - 1)
    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    ms, tl = [data_pred(x, ts[0])], [ts[0]]
    for step_index in range(1, steps):
        if step_index < order:
            x, m = update(x, ms, tl, ts[step_index], step_index, True)
            ms.append(m)
            tl.append(ts[step_index])
            continue
        for step in range(step_index, step_index + 1 + (step_index == steps - 1)):
            x, m = update(x, ms, tl, ts[step], min(order, steps + 1 - step), step != steps)
            ms, tl = (ms + [m])[-order:], (tl + [ts[step]])[-order:]
    return x / alpha(ts[-1])


COMFY_TRANSCRIPTIONS = {
    "euler": _comfy_euler, "ddim": _comfy_euler, "heun": _comfy_heun, "dpm_2": _comfy_dpm_2, "lms": _comfy_lms,
    "dpmpp_2m": _comfy_dpmpp_2m, "ipndm": _comfy_ipndm, "ipndm_v": _comfy_ipndm_v, "deis": _comfy_deis,
    "res_multistep": _comfy_res_multistep, "gradient_estimation": _comfy_gradient_estimation,
    "exp_heun_2_x0": _comfy_exp_heun_2_x0,
    "uni_pc": lambda m, x, s: _comfy_uni_pc(m, x, s, "bh1"),
    "uni_pc_bh2": lambda m, x, s: _comfy_uni_pc(m, x, s, "bh2"),
}


def _engine_runs(monkeypatch):
    """Record (denoiser, x, sigmas, sampler output) of every sampler run the engine makes."""
    import unsampling_lab.engine as engine

    runs, run = [], engine.run_sampler

    def recording(spec, denoiser, x, sigmas, **kwargs):
        out = run(spec, denoiser, x, sigmas, **kwargs)
        runs.append((denoiser, x.clone(), sigmas.clone(), out))
        return out

    monkeypatch.setattr(engine, "run_sampler", recording)
    return runs


def _sampler_vs_transcription(comfy_reference, monkeypatch, sampler, scheduler, cfg):
    """(unsample, resample) relative L2 between our sampler in the engine and the transcription, same denoiser."""
    model, inputs = comfy_reference["model"], comfy_reference["inputs"]
    positive, negative = _conds(inputs)
    runs = _engine_runs(monkeypatch)
    up = ul.unsample(model, {"samples": inputs["latent"]}, steps=10, cfg=cfg, sampler_name=sampler,
                     scheduler=scheduler, positive=positive, negative=negative, progress=False)
    ul.resample(model, up, steps=10, cfg=cfg, sampler_name=sampler, scheduler=scheduler, positive=positive,
                negative=negative, progress=False)
    rels = []
    for denoiser, x, sigmas, ours in runs:
        assert sigmas.dtype == x.dtype == torch.float32
        with torch.inference_mode():
            ref = COMFY_TRANSCRIPTIONS[sampler](denoiser, x, sigmas)
        rels.append(_rel(ours, ref))
    return rels


TRANSCRIBED = [n for n in COMFY_TRANSCRIPTIONS if not n.startswith("uni_pc")]


@pytest.mark.parametrize("cfg", [1.0, 4.0])
@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("sampler", TRANSCRIBED)
def test_sampler_arithmetic_is_comfyuis(comfy_reference, monkeypatch, sampler, scheduler, cfg):
    """Our float32 step arithmetic is ComfyUI's: unsampling and resampling agree with the transcription."""
    up, down = _sampler_vs_transcription(comfy_reference, monkeypatch, sampler, scheduler, cfg)
    assert up < 1e-6 and down < 1e-6, (sampler, scheduler, cfg, up, down)


@pytest.mark.parametrize("sampler", ["uni_pc", "uni_pc_bh2"])
def test_uni_pc_against_comfyuis_vp_form(comfy_reference, monkeypatch, sampler):
    """ComfyUI's UniPC (VP variables) is NaN when unsampling; ours is finite. Sampling down, where ComfyUI is
    finite, ours (sigma space) agrees with it to its own VP rescaling rounding."""
    rels = []
    for cfg in (1.0, 4.0):
        up, down = _sampler_vs_transcription(comfy_reference, monkeypatch, sampler, "karras", cfg)
        assert up != up  # NaN: ComfyUI's std(1e-4) is 0 in float32
        rels.append(down)
    assert max(rels) < 2e-5, rels


def test_deis_coefficients_are_comfyuis_bit_for_bit(comfy_reference, one_thread):
    """The DEIS weight table against the transcription of comfy/k_diffusion/deis.py, every entry equal to the bit, on
    every sigma list of the reference (the KSampler's and the Unsampler's, 9 schedulers). ComfyUI's VP-time
    constants are float64 (sigma_max is the int 80); with float32 ones every weight differed in its last bits."""
    from unsampling_lab.samplers.ode import deis_coefficients

    keys = ("ksampler_sigmas", "unsample_sigmas")
    lists = {tuple(case[key]) for case in comfy_reference["cases"] for key in keys if key in case}
    for sigmas in map(torch.tensor, sorted(lists)):
        assert sigmas.dtype == torch.float32
        ours, theirs = deis_coefficients(sigmas), _comfy_deis_table(sigmas)
        assert [len(row) for row in ours] == [len(row) for row in theirs]
        assert sum(len(row) for row in ours) > 0
        for i, (row, expected) in enumerate(zip(ours, theirs)):
            for j, (w, w_expected) in enumerate(zip(row, expected)):
                assert torch.equal(w, w_expected), (sigmas.tolist(), i, j, float(w), float(w_expected))
    assert len(lists) >= 18


# -- CFG++ as a flag of its base loop: dpmpp_2s_ancestral and gradient_estimation --------------------------------
#
# REFERENCE TRANSCRIPTIONS of ComfyUI's `sample_dpmpp_2s_ancestral_cfg_pp` / `sample_dpmpp_2s_ancestral_RF_cfg_pp`
# (since ComfyUI PR 14814, which made the uncond estimate the one integrated in both stages, stopped reading the
# uncond after the midpoint call overwrote it, and added the flow form) and of `sample_gradient_estimation(cfg_pp)`.
# The uncond comes through ComfyUI's post-cfg hook: every model call leaves it in `box`.


def _comfy_dpmpp_2s_ancestral_cfg_pp(denoiser, x, sigmas, noise_sampler, flow, eta=1.0):
    model, box = post_cfg(denoiser)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        guidance_vector = denoised - box["uncond"]
        if flow:
            sigma_down = sigmas[i + 1] * (1 + (sigmas[i + 1] / sigmas[i] - 1) * eta)
            alpha_ip1, alpha_down = 1 - sigmas[i + 1], 1 - sigma_down
            renoise_coeff = (sigmas[i + 1] ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
            if sigmas[i + 1] == 0:
                x = x + (x - box["uncond"]) / sigmas[i] * (sigma_down - sigmas[i])
            else:
                if sigmas[i] == 1.0:
                    sigma_s = 0.9999
                else:
                    t_i, t_down = ((1 - sigmas[i]) / sigmas[i]).log(), ((1 - sigma_down) / sigma_down).log()
                    sigma_s = ((t_i + 0.5 * (t_down - t_i)).exp() + 1) ** -1
                ratio = sigma_s / sigmas[i]
                model(ratio * x + (1 - ratio) * box["uncond"], sigma_s * _s_in(x))
                ratio = sigma_down / sigmas[i]
                x = ratio * x + (1 - ratio) * box["uncond"]
            if sigmas[i + 1] > 0 and eta > 0:
                x = (alpha_ip1 / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * 1.0 * renoise_coeff
            x += (1 - sigmas[i + 1]) * guidance_vector
            continue
        sigma_up = min(sigmas[i + 1], eta * (sigmas[i + 1] ** 2 * (sigmas[i] ** 2 - sigmas[i + 1] ** 2)
                                             / sigmas[i] ** 2) ** 0.5)
        sigma_down = (sigmas[i + 1] ** 2 - sigma_up ** 2) ** 0.5
        if sigma_down == 0:
            x = x + (x - box["uncond"]) / sigmas[i] * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * box["uncond"]
            model(x_2, s.neg().exp() * _s_in(x))
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * box["uncond"]
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * 1.0 * sigma_up
        x += guidance_vector
    return x


def _comfy_gradient_estimation_flag(denoiser, x, sigmas, cfg_pp, ge_gamma=2.0):
    model, box = post_cfg(denoiser)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = (x - (box["uncond"] if cfg_pp else denoised)) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


class _GuidedGaussians:
    """cfg 3 between two exact Gaussian denoisers (cond and uncond differ everywhere), VP or flow, float32."""

    COND = ((0.3, -2.0, 1.0, 0.0), (0.5, 1.0, 0.8, 1.5))
    UNCOND = ((-1.0, 0.5, 0.0, 2.0), (1.0, 0.3, 0.6, 0.9))

    def __init__(self, flow: bool):
        from unsampling_lab.models.gaussian import GaussianData

        self.cond, self.uncond = (GaussianData(torch.tensor(m), torch.tensor(s)) for m, s in (self.COND, self.UNCOND))
        self.flow = flow
        self.model_sampling = ModelSampling.flow(shift=1.0) if flow else ModelSampling.discrete()

    def with_uncond(self, x, sigma):
        name = "denoise_flow" if self.flow else "denoise"
        cond, uncond = (getattr(d, name)(x, sigma[:, None]) for d in (self.cond, self.uncond))
        return uncond + (cond - uncond) * 3.0, uncond

    def __call__(self, x, sigma):
        return self.with_uncond(x, sigma)[0]


def _noise_stream(x, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, generator=generator)


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_dpmpp_2s_ancestral_cfg_pp_is_comfyuis_bit_for_bit(family):
    """Ours is ComfyUI's current CFG++ 2S step, VP and flow, from the same noise stream, bit for bit. (Before ComfyUI's
    PR 14814 its 2S stages integrated x + D_cfg - D_uncond with the guided estimates and it had no flow form: a
    ComfyUI of that age gives other seeded outputs, issue 18.)"""
    flow = family == "flow"
    model = _GuidedGaussians(flow)
    sigmas = ul.calculate_sigmas(model.model_sampling, "simple" if flow else "karras", 10)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0 and (not flow or sigmas[0] == 1)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    ours = get_sampler("dpmpp_2s_ancestral_cfg_pp").fn(model, x, sigmas, noise=_noise_stream(x))
    theirs = _comfy_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, _noise_stream(x), flow)
    assert torch.isfinite(ours).all()
    assert torch.equal(ours, theirs), float((ours - theirs).abs().max())
    plain = get_sampler("dpmpp_2s_ancestral").fn(model, x, sigmas, noise=_noise_stream(x))
    assert not torch.allclose(plain, ours)  # the flag changes the step: guidance really is CFG++ here


def test_dpmpp_2s_ancestral_cfg_pp_in_the_engine_is_comfyuis(comfy_reference, monkeypatch, one_thread):
    """The same through ul.resample on the reference UNet at cfg 4 (the engine's guided denoiser, seeded noise)."""
    model, inputs = comfy_reference["model"], comfy_reference["inputs"]
    positive, negative = _conds(inputs)
    runs = _engine_runs(monkeypatch)
    ul.resample(model, {"samples": inputs["latent"]}, steps=10, cfg=4.0, sampler_name="dpmpp_2s_ancestral_cfg_pp",
                scheduler="karras", positive=positive, negative=negative, add_noise=True, noise_seed=5,
                progress=False)
    (denoiser, x, sigmas, ours), = runs
    with torch.inference_mode():
        theirs = _comfy_dpmpp_2s_ancestral_cfg_pp(denoiser, x, sigmas, _noise_stream(x, seed=5 + 1), False)
    assert torch.equal(ours, theirs), _rel(ours, theirs)


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("sampler", ["gradient_estimation", "gradient_estimation_cfg_pp"])
def test_gradient_estimation_flag_is_comfyuis_bit_for_bit(sampler, family):
    """Both values of the cfg_pp flag against ComfyUI's one loop with its cfg_pp flag, down and up (unsampling)."""
    model = _GuidedGaussians(family == "flow")
    down = ul.calculate_sigmas(model.model_sampling, "karras" if family == "vp" else "simple", 10)
    up = down.flip(0).clamp(min=1e-4)
    for sigmas in (down, up):
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * (sigmas[0] if sigmas is down else 0.5)
        ours = get_sampler(sampler).fn(model, x, sigmas)
        theirs = _comfy_gradient_estimation_flag(model, x, sigmas, cfg_pp=sampler.endswith("cfg_pp"))
        assert torch.isfinite(ours).all()
        assert torch.equal(ours, theirs), (sigmas is down, float((ours - theirs).abs().max()))
