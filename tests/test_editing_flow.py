"""Editing flow transformers (ul.edit on SD3/Flux): the value_injection control and Direct Inversion.

Tiny seeded transformers with two injectable blocks each (SD3: two joint blocks; Flux: one double-stream and
two single-stream blocks), prompts through a toy word-vector encoder, 4 steps, 2 images. Bit-for-bit checks
compare with a plain resample of the same 2B rows (the noise twice): the tiny transformers' CPU kernels round
differently at batch B and 2B (by about 1e-6), so only the same batch can be equal to the bit.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel

import unsampling_lab as ul
from unsampling_lab.editing import edit, flow_attention
from unsampling_lab.models.analytic import gaussian_model
from unsampling_lab.models.base import Conditioning
from unsampling_lab.models.flow import load_flow_model, pack_latents
from unsampling_lab.models.gaussian import GaussianData

STEPS = 4
SRC, TGT = "a red circle", "a blue square"
ALL = dict(first_block=0, value_steps=1.0)  # every block, every step of the tiny models


def _encoder(prompts):
    """Toy text encoder: one seeded vector per word, 5 token slots (zero padded), pooled = a slice of the mean."""
    rows = []
    for p in prompts:
        words = p.split()[:5]
        vecs = [torch.randn(16, generator=torch.Generator().manual_seed(sum(ord(c) * 31 ** k for k, c in enumerate(w))))
                for w in words]
        rows.append(torch.cat([*(v[None] for v in vecs), torch.zeros(5 - len(vecs), 16)]))  # "" (uncond): zeros
    embeds = torch.stack(rows)
    return Conditioning(embeds, embeds.mean(1)[:, :8])


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "sd3":
        net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                    num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                    pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16)
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    else:
        net = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
                                     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                                     guidance_embeds=True, axes_dims_rope=(2, 2, 4))
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    model = load_flow_model({"transformer": net.eval(), "scheduler": sched}, device="cpu")
    model.encoder = _encoder
    return model


@pytest.fixture(scope="module", params=["sd3", "flux"])
def setup(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = _model(request.param)
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = ul.unsample(model, latent, steps=STEPS, positive=SRC, progress=False)
    yield model, latent, noise
    torch.set_num_threads(threads)


def _cfg(model) -> float:
    return 1.0 if model.kind == "flux" else 3.0  # Flux: distilled guidance, one group; SD3: cond and uncond groups


def _plain_2b(model, noise, prompt, states=None):
    """A plain resample of the noise twice (2B rows, the edit's batch); `states` collects each step's state."""
    cb = None if states is None else (lambda step: states.append(step.x.clone()))
    return ul.resample(model, torch.cat([noise, noise]), steps=STEPS, cfg=_cfg(model), positive=prompt,
                       progress=False, callback=cb)


@pytest.mark.parametrize("tokens", ["all", "image"])
def test_target_equal_to_source_is_a_plain_resample(setup, tokens):
    model, _, noise = setup
    plain = _plain_2b(model, noise, SRC)
    res = edit(model, noise, steps=STEPS, source=SRC, target=SRC, control="value_injection", cfg=_cfg(model),
               tokens=tokens, **ALL)
    assert torch.equal(res.target, res.source) and torch.equal(res.source, plain[:2]) and torch.equal(res.target, plain[2:])
    torch.testing.assert_close(res.target, ul.resample(model, noise, steps=STEPS, cfg=_cfg(model), positive=SRC,
                                                       progress=False), rtol=0, atol=1e-5)  # batch B


@pytest.mark.parametrize("tokens", ["all", "image"])
def test_direct_on_the_resamples_own_path_changes_nothing(setup, tokens):
    model, _, noise = setup
    states: list[torch.Tensor] = []
    plain = _plain_2b(model, noise, SRC, states)
    path = torch.stack([s[:2] for s in states] + [model.latent_format.process_in(plain[:2])])
    res = edit(model, noise, steps=STEPS, source=SRC, target=SRC, control="value_injection", cfg=_cfg(model),
               direct=path, tokens=tokens, **ALL)
    assert torch.equal(res.target, plain[2:])
    torch.testing.assert_close(res.source, plain[:2], rtol=0, atol=1e-6)  # process_in/out round trip


def test_the_window_is_where_the_target_changes(setup):
    """value_steps=0 is prompt_swap bit for bit; a full window changes the target and never the source."""
    model, _, noise = setup
    kw = dict(steps=STEPS, source=SRC, target=TGT, cfg=_cfg(model))
    swap = edit(model, noise, control="prompt_swap", **kw)
    none = edit(model, noise, control="value_injection", first_block=0, value_steps=0.0, **kw)
    full = edit(model, noise, control="value_injection", **ALL, **kw)
    assert torch.equal(none.target, swap.target) and torch.equal(none.source, swap.source)
    assert torch.equal(full.source, swap.source)
    assert (full.target - swap.target).abs().max() > 1e-3


def test_outside_the_window_the_network_is_untouched(setup, monkeypatch):
    """Half the steps injected: at every later call the network's output is that of the plain transformer on
    the same input, bit for bit; inside the window only the target rows differ from it."""
    model, _, noise = setup
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, t, c: calls.append((x, t, c, out := forward(x, t, c))) or out)
    edit(model, noise, steps=STEPS, source=SRC, target=TGT, control="value_injection", cfg=_cfg(model),
         first_block=0, value_steps=0.5)
    monkeypatch.undo()
    assert len(calls) == STEPS
    b = 2
    for i, (x, t, c, out) in enumerate(calls):
        again = model.forward(x, t, c)
        if i >= STEPS // 2:
            assert torch.equal(out, again), i
            continue
        groups = x.shape[0] // (2 * b)
        for g in range(groups):  # every source row, uncond and cond
            assert torch.equal(out[2 * b * g: 2 * b * g + b], again[2 * b * g: 2 * b * g + b]), i
        g = groups - 1  # the cond group's target (at step 0 the uncond group's two branches are the same rows)
        assert not torch.equal(out[2 * b * g + b:], again[2 * b * g + b:]), i


def test_injecting_the_targets_own_values_changes_nothing(setup, monkeypatch):
    model, _, noise = setup
    used = []

    def own(v, groups, b, tokens=slice(None)):
        used.append(len(groups))
        out = v.clone()
        for g in groups:
            tgt = slice(2 * b * g + b, 2 * b * (g + 1))
            out[tgt, tokens] = v[tgt, tokens]
        return out

    kw = dict(steps=STEPS, source=SRC, target=TGT, cfg=_cfg(model))
    swap = edit(model, noise, control="prompt_swap", **kw)
    monkeypatch.setattr(flow_attention, "inject_values", own)
    res = edit(model, noise, control="value_injection", **ALL, **kw)
    assert torch.equal(res.target, swap.target)
    hooked = 2 * (2 if model.kind == "sd3" else 1)  # SD3: to_v and add_v_proj of each of its 2 joint blocks
    groups = 1 if _cfg(model) == 1.0 else 2
    assert used == [groups] * (STEPS * hooked)  # every hooked projection, every step, both cfg groups (PnP-like)


def test_image_tokens_only_leave_each_branch_its_text_values(setup, monkeypatch):
    """tokens="image": the target rows take the source's V on the image tokens and keep their own on the text
    tokens (Flux: the first 5 rows of the single stream, the encoder's length; SD3: add_v_proj is not hooked)."""
    model, _, noise = setup
    real, seen = flow_attention.inject_values, []
    monkeypatch.setattr(flow_attention, "inject_values",
                        lambda v, groups, b, tokens=slice(None): seen.append((v, out := real(v, groups, b, tokens))) or out)
    edit(model, noise, steps=STEPS, source=SRC, target=TGT, control="value_injection", cfg=_cfg(model),
         tokens="image", **ALL)
    text = 5 if model.kind == "flux" else 0  # SD3's to_v sees the image tokens only
    image = 16  # 8x8 latents in 2x2 patches (Flux packs them, SD3 has patch_size 2)
    assert seen and all(v.shape[1] == text + image for v, _ in seen)
    b = 2
    for v, out in seen:
        for g in range(v.shape[0] // (2 * b)):
            src, tgt = slice(2 * b * g, 2 * b * g + b), slice(2 * b * g + b, 2 * b * (g + 1))
            assert torch.equal(out[tgt, text:], v[src, text:]) and torch.equal(out[tgt, :text], v[tgt, :text])
            assert torch.equal(out[src], v[src])
    if model.kind == "flux":  # the text values do differ between the prompts, so keeping them is a choice
        assert not torch.equal(seen[0][0][b: 2 * b, :text], seen[0][0][:b, :text])


def test_blocks_and_tokens_pick_the_projections(setup):
    model, _, _ = setup
    t = model.transformer
    names = lambda **kw: [n for n, _, _ in flow_attention.value_projections(t, model.kind, **kw)]  # noqa: E731
    if model.kind == "flux":
        assert names(first_block=1, last_block=-1, tokens="all") == ["single_transformer_blocks.1.attn.to_v"]
        assert names(first_block=0, last_block=0, tokens="image") == ["single_transformer_blocks.0.attn.to_v"]
    else:
        assert names(first_block=1, last_block=1, tokens="all") == ["transformer_blocks.1.attn.to_v",
                                                                    "transformer_blocks.1.attn.add_v_proj"]
        assert names(first_block=0, last_block=-1, tokens="image") == ["transformer_blocks.0.attn.to_v",
                                                                       "transformer_blocks.1.attn.to_v"]
    with pytest.raises(ul.UnsamplingError, match=r"blocks 20\.\.-1 are not among .* 2 .* blocks \(0\.\.1\)"):
        names(first_block=20, last_block=-1, tokens="all")


def test_one_batched_network_call_per_step_and_cfg_pass(setup):
    model, _, noise = setup
    rows: list[int] = []
    handle = model.transformer.register_forward_pre_hook(lambda m, a, kw: rows.append(int(kw["hidden_states"].shape[0])),
                                                         with_kwargs=True)
    try:
        res = edit(model, noise, steps=STEPS, source=SRC, target=TGT, control="value_injection", cfg=_cfg(model), **ALL)
    finally:
        handle.remove()
    per_call = 4 if _cfg(model) == 1.0 else 8  # 2B rows, times 2 with the uncond pass (batched with the cond)
    assert rows == [per_call] * STEPS
    assert (res.network_calls, res.network_rows, res.nfe) == (STEPS, per_call * STEPS, STEPS)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_direct_source_rows_are_the_inversion_path(setup, sampler):
    """Tolerance 0 on the network inputs: at every call the source rows are c_in(σᵢ) x*ᵢ of the recorded path.
    The source LATENT returned is the path's end within 1e-6; that end is the Unsampler's start at σ = 1e-4
    ((1 − σ) x₀, flow models), not σ = 0, so it is the input latent only within 1e-3 (6e-4 measured here)."""
    model, latent, _ = setup
    traj = ul.unsample_trajectory(model, latent, steps=STEPS, sampler_name=sampler, positive=SRC, progress=False)
    path = traj.xs.flip(0)
    sigmas = ul.resample_sigmas(model, steps=STEPS, sampler_name=sampler)
    inputs: list[torch.Tensor] = []
    handle = model.transformer.register_forward_pre_hook(
        lambda m, a, kw: inputs.append(kw["hidden_states"].clone()), with_kwargs=True)
    try:
        res = edit(model, traj, source=SRC, target=TGT, control="value_injection", cfg=_cfg(model), direct=True, **ALL)
    finally:
        handle.remove()
    steps = list(range(STEPS)) if sampler == "euler" else [j for i in range(STEPS - 1) for j in (i, i + 1)] + [STEPS - 1]
    assert len(inputs) == len(steps) == res.network_calls
    ms, b = model.model_sampling, 2
    for x_in, i in zip(inputs, steps):
        want = ms.calculate_input(sigmas[i].reshape(1).expand(b), path[i])
        if model.kind == "flux":
            want = pack_latents(want)
        for g in range(x_in.shape[0] // (2 * b)):
            assert torch.equal(x_in[2 * b * g: 2 * b * g + b], want)
    torch.testing.assert_close(res.source, model.latent_format.process_out(path[-1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.source, latent, rtol=0, atol=1e-3)


def test_direct_source_values_are_the_inversions_at_the_same_state(setup):
    """The docstring's claim: with direct=True and euler, the source rows' V at step i (i = 1..n-1) is the V the
    Euler unsample computed at the same state x*ᵢ, up to the Unsampler's +1e-4 sigma offset (it evaluated at
    σᵢ + 1e-4, the edit at σᵢ): relative difference below 5e-3 in every step, and more than ten times closer
    than the source branch without direct (a resample of the inverted noise)."""
    model, latent, _ = setup
    blocks = model.transformer.single_transformer_blocks if model.kind == "flux" else model.transformer.transformer_blocks
    seen: list[torch.Tensor] = []
    handle = blocks[1].attn.to_v.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        traj = ul.unsample_trajectory(model, latent, steps=STEPS, positive=SRC, progress=False)  # calls at σₙ..σ₁
        inversion = list(seen)
        runs = []
        for direct in (True, False):
            seen.clear()
            edit(model, traj, source=SRC, target=TGT, control="value_injection", direct=direct, **ALL)
            runs.append(list(seen))
    finally:
        handle.remove()
    assert len(inversion) == STEPS and all(len(r) == STEPS for r in runs)
    rel = [[float((r[i][:2] - inversion[STEPS - i]).norm() / inversion[STEPS - i].norm()) for i in range(1, STEPS)]
           for r in runs]
    assert max(rel[0]) < 5e-3, rel[0]
    assert max(rel[1]) > 10 * max(rel[0]), rel


def test_refusals_say_what_to_use(setup):
    model, _, noise = setup
    kw = dict(steps=STEPS, source=SRC, target=TGT)
    with pytest.raises(ul.UnsamplingError, match="serves eps/v models .* not this 'flow' model; use control='value_injection'"):
        edit(model, noise, control="p2p", **kw)
    with pytest.raises(ul.UnsamplingError, match="serves eps/v models .* use control='value_injection'"):
        edit(model, noise, control="pnp", **kw)
    with pytest.raises(ul.UnsamplingError, match="did you mean 'value_steps'"):
        edit(model, noise, control="value_injection", value_step=0.5, **kw)
    with pytest.raises(ul.UnsamplingError, match="option tokens must be one of 'all', 'image'"):
        edit(model, noise, control="value_injection", tokens="text", **kw)
    with pytest.raises(ul.UnsamplingError, match="record_attention .* leave record_attention off"):
        edit(model, noise, control="value_injection", record_attention=True, **ALL, **kw)
    with pytest.raises(ul.UnsamplingError, match="not among this"):
        edit(model, noise, control="value_injection", **kw)  # the papers' block 20 on a 2-block model
    eps = gaussian_model(GaussianData(torch.zeros(4), torch.ones(4)))
    with pytest.raises(ul.UnsamplingError, match="serves flow models .* not this 'eps' model; use control='p2p' or"):
        edit(eps, torch.zeros(1, 4), source="a", target="b", control="value_injection")


@pytest.mark.parametrize("method", ["rf_solver", "fireflow"])
def test_composes_with_the_papers_solvers(setup, method):
    """The papers' own pipelines: invert with RF-Solver / FireFlow, edit with value injection (their midpoint
    evaluations inside a step are injected as the step's, as in the papers' code). Same prompts: the target is
    the source and the method's own resample (batch B, so within 1e-5)."""
    model, latent, _ = setup
    inv = ul.invert(model, latent, method=method, steps=STEPS, positive=SRC, progress=False)
    res = edit(model, inv, source=SRC, target=SRC, control="value_injection", **ALL)
    assert torch.equal(res.target, res.source)
    plain = ul.resample(model, inv, steps=STEPS, positive=SRC, progress=False)
    torch.testing.assert_close(res.target, plain, rtol=0, atol=1e-5)
    moved = edit(model, inv, source=SRC, target=TGT, control="value_injection", **ALL)
    swap = edit(model, inv, source=SRC, target=TGT, control="prompt_swap")
    assert torch.equal(moved.source, swap.source) and not torch.equal(moved.target, swap.target)
