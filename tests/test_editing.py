"""The editing layer (ul.edit): two branches in one batch, attention/feature controls, Direct Inversion.

Every check runs on the bundled shapes model (8x8 latents, cross-attention UNet), 2 images, few steps.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import unsampling_lab as ul
from unsampling_lab.bundled import shapes
from unsampling_lab.editing import CONTROL_SPECS, CONTROLS, edit, edit_image
from unsampling_lab.editing.tokens import global_alignment, refine_mapper, word_positions

STEPS = 6
CFG = 3.0


@pytest.fixture(scope="module")
def setup(shapes_pair):
    model, _, latent, src, tgt = shapes_pair
    inv = ul.invert(model, latent, method="unsampler", steps=STEPS, positive=src, progress=False)
    return model, latent, src, tgt, inv


class NetworkCalls:
    """Counts the UNet's calls and the rows of each, from outside (a forward pre-hook), and keeps the inputs."""

    def __init__(self, unet):
        self.rows: list[int] = []
        self.inputs: list[torch.Tensor] = []
        self.handle = unet.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.rows.append(int(args[0].shape[0]))
        self.inputs.append(args[0].detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


UNET_CONTROLS = [c for c in CONTROLS if "eps" in CONTROL_SPECS[c].families]  # flow-only ones: test_editing_flow.py
CASES = [(c, {}) for c in UNET_CONTROLS] + [("p2p", {"blend_words": ("circle", "square", "triangle", "cross")}),
                                       ("p2p_reweight", {"words": ("circle", "square"), "scale": 1.0})]


@pytest.mark.parametrize("control,options", CASES, ids=[f"{c}{'+' + '_'.join(o) if o else ''}" for c, o in CASES])
def test_target_equal_to_source_is_the_source_and_a_plain_resample(setup, control, options):
    model, _, src, _, inv = setup
    plain = ul.resample(model, inv, steps=STEPS, cfg=CFG, positive=src, progress=False)["samples"]
    res = edit(model, inv, source=src, target=src, control=control, cfg=CFG, **options)
    assert torch.equal(res.target["samples"], res.source["samples"])
    assert torch.equal(res.source["samples"], plain)


@pytest.mark.parametrize("control", UNET_CONTROLS)
def test_direct_on_the_resamples_own_path_changes_nothing(setup, control):
    """Pinning the source branch to the states it would pass through anyway: target == plain resample, bit for bit."""
    model, _, src, _, inv = setup
    states: list[torch.Tensor] = []
    plain = ul.resample(model, inv, steps=STEPS, cfg=CFG, positive=src, progress=False,
                        callback=lambda step: states.append(step.x.clone()))["samples"]
    path = torch.stack(states + [model.latent_format.process_in(plain)])
    res = edit(model, inv, source=src, target=src, control=control, cfg=CFG, direct=path)
    assert torch.equal(res.target["samples"], plain)
    torch.testing.assert_close(res.source["samples"], plain, rtol=0, atol=1e-6)  # process_in/out round trip


def _pinned_inputs(model, path, rows, sigmas, b):
    """The network inputs the source rows must have at each call, given the steps the calls belong to."""
    ms = model.model_sampling
    return [ms.calculate_input(sigmas[i].reshape(1).expand(b), path[i]) for i in rows]


@pytest.mark.parametrize("how", ["unsampler/euler", "unsampler/heun", "fixed_point/euler", "null_text/euler"])
def test_direct_source_rows_are_the_inversion_path(setup, how):
    """Tolerance 0: at every network call the source rows are c_in(σᵢ) x*ᵢ of the recorded path, bit for bit;
    the source LATENT returned is the path's end (the input latent) within 1e-5."""
    model, latent, src, tgt, _ = setup
    method, sampler = how.split("/")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "unsampler":
            run_on = ul.unsample_trajectory(model, latent, steps=STEPS, sampler_name=sampler, positive=src, progress=False)
            path = run_on.xs.flip(0)
        else:
            opts = dict(inner_steps=2, pivot_iterations=3) if method == "null_text" else dict(iterations=5)
            run_on = ul.invert(model, latent, method=method, steps=STEPS, cfg=CFG if method == "null_text" else 1.0,
                               sampler_name=sampler, positive=src, progress=False, **opts)
            path = run_on.resampling["path"]
    sigmas = ul.resample_sigmas(model, steps=STEPS, sampler_name=sampler)
    timesteps = model.model_sampling.timestep(sigmas[:-1])
    with NetworkCalls(model.unet) as calls:
        res = edit(model, run_on, source=src, target=tgt, control="p2p", cfg=CFG, direct=True)
    assert len(calls.rows) == res.network_calls
    b = 2
    for x_in in calls.inputs:
        assert x_in.shape[0] == 4 * b
    # which step each call belongs to: the sampler's order (euler: one per step; heun: i then i + 1)
    steps = list(range(STEPS)) if sampler == "euler" else [j for i in range(STEPS - 1) for j in (i, i + 1)] + [STEPS - 1]
    want = _pinned_inputs(model, path, steps, sigmas, b)
    for x_in, w in zip(calls.inputs, want):
        assert torch.equal(x_in[:b], w) and torch.equal(x_in[2 * b: 3 * b], w)  # uncond and cond source rows
    assert len(timesteps) == STEPS
    source = res.source["samples"] if isinstance(res.source, dict) else res.source  # a Trajectory input gives tensors
    torch.testing.assert_close(source, latent["samples"], rtol=0, atol=1e-5)


def test_direct_refuses_what_it_cannot_pin(setup):
    model, latent, src, tgt, inv = setup
    bdia = ul.invert(model, latent, method="bdia", steps=STEPS, positive=src, progress=False)
    with pytest.raises(ul.UnsamplingError, match="needs the inversion path, and method 'bdia' records none"):
        edit(model, bdia, source=src, target=tgt, direct=True)
    with pytest.raises(ul.UnsamplingError, match="a noise LATENT carries none"):
        edit(model, inv.noise, source=src, target=tgt, direct=True)
    traj = ul.unsample_trajectory(model, latent, steps=STEPS, sampler_name="dpm_2", positive=src, progress=False)
    with pytest.raises(ul.UnsamplingError, match="between them"):
        edit(model, traj, source=src, target=tgt, direct=True)


def test_an_unsampler_inversion_carries_its_path_for_direct(setup):
    """ul.invert(method="unsampler") keeps the states ul.unsample_trajectory records, so direct=True on the
    Inversion is direct=trajectory."""
    model, latent, src, tgt, inv = setup
    traj = ul.unsample_trajectory(model, latent, steps=STEPS, positive=src, progress=False)
    assert torch.equal(inv.resampling["path"], traj.xs.flip(0))
    a = edit(model, inv, source=src, target=tgt, control="p2p", cfg=CFG, direct=True)
    b = edit(model, traj, source=src, target=tgt, control="p2p", cfg=CFG, direct=True)
    samples = lambda r: r["samples"] if isinstance(r, dict) else r  # noqa: E731 (a Trajectory input gives tensors)
    assert torch.equal(samples(a.target), samples(b.target)) and a.direct and b.direct


def test_recorded_maps_are_distributions_over_the_tokens(setup):
    model, _, src, tgt, inv = setup
    res = edit(model, inv, source=src, target=tgt, control="p2p", cfg=CFG, record_attention=True)
    att = res.attention
    assert att.steps == list(range(STEPS))
    assert len(att.maps) == 7  # the bundled UNet's cross-attention layers
    for m in att.maps.values():
        assert m.shape[:2] == (STEPS, 4) and m.shape[-1] == 8
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]), rtol=0, atol=1e-5)
    assert att.tokens[2][1] == tgt[0].split()[0]
    assert att.token_by_step(branch="source", item=1).shape == (8, STEPS)
    # the maps are each branch's own (before injection, as P2P's AttentionStore): the source rows are those
    # of a plain prompt swap, whose source branch the control never touches
    swap = edit(model, inv, source=src, target=tgt, control="prompt_swap", cfg=CFG, record_attention=True)
    for name, m in att.maps.items():
        torch.testing.assert_close(m[:, :2], swap.attention.maps[name][:, :2], rtol=0, atol=1e-6)


def test_reweight_scale_one_is_the_swap_and_the_explicit_maps_agree(setup):
    model, _, src, tgt, inv = setup
    base = edit(model, inv, source=src, target=tgt, control="p2p", cfg=CFG)
    one = edit(model, inv, source=src, target=tgt, control="p2p_reweight", cfg=CFG, words=("circle", "square"), scale=1.0)
    assert torch.equal(one.target["samples"], base.target["samples"])
    # a weight a hair above 1 takes the explicit (M_src * w) V_tgt path: the same edit to float rounding
    near = edit(model, inv, source=src, target=tgt, control="p2p_reweight", cfg=CFG, words=shapes.SHAPES,
                scale=1.0 + 1e-7)
    torch.testing.assert_close(near.target["samples"], base.target["samples"], rtol=0, atol=1e-4)
    strong = edit(model, inv, source=src, target=tgt, control="p2p_reweight", cfg=CFG, words=shapes.SHAPES, scale=3.0)
    assert not torch.equal(strong.target["samples"], base.target["samples"])


def test_refine_alignment_hand_worked(setup):
    # source "a red circle" ids [1, 2, 3]; target "a red big circle" [1, 2, 9, 3]: 'big' is new
    assert global_alignment([1, 2, 3], [1, 2, 9, 3]) == [0, 1, -1, 2]
    # a swapped word: mismatch -1 < two gaps 0, so refine treats it as new (P2P's scores); the rest aligns
    assert global_alignment([1, 2, 3], [1, 5, 3]) == [0, -1, 2]
    assert global_alignment([4, 1, 2], [1, 2]) == [1, 2]  # a dropped word
    model = setup[0]
    tok = model.tokenizer
    assert word_positions(tok, "red big circle", ["circle"]) == [5]  # 'big' is 3 byte-level tokens here
    mapper, alpha = refine_mapper(tok, "red circle", "red big circle", 8)
    # start->start, red->red, big's 3 pieces new, circle->circle (2), end->end (3), padding->padding
    assert mapper.tolist() == [0, 1, 0, 0, 0, 2, 3, 4]
    assert alpha.tolist() == [1, 1, 0, 0, 0, 1, 1, 1]


def test_refine_with_an_added_word_runs_its_own_maps_path(setup):
    model, latent, src, _, inv = setup
    tgt = [f"{s} {s.split()[1]}" for s in src]  # "red circle" -> "red circle circle": one added token
    swap = edit(model, inv, source=src, target=tgt, control="prompt_swap", cfg=CFG)
    res = edit(model, inv, source=src, target=tgt, control="p2p_refine", cfg=CFG)
    assert torch.equal(res.source["samples"], swap.source["samples"])
    assert not torch.equal(res.target["samples"], swap.target["samples"])


def test_one_batched_network_call_per_step_and_cfg_pass(setup):
    model, latent, src, tgt, inv = setup
    for cfg, rows in ((CFG, 8), (1.0, 4)):
        with NetworkCalls(model.unet) as calls:
            res = edit(model, inv, source=src, target=tgt, control="p2p", cfg=cfg)
        assert calls.rows == [rows] * STEPS and res.network_calls == STEPS and res.nfe == STEPS
    pair = ul.invert(model, latent, method="edict", steps=STEPS, positive=src, progress=False)
    with NetworkCalls(model.unet) as calls:
        res = edit(model, pair, source=src, target=tgt, control="pnp", cfg=CFG)
    assert calls.rows == [8] * (2 * STEPS) and res.nfe == 2 * STEPS


def test_controls_leave_the_source_branch_alone(setup):
    model, _, src, tgt, inv = setup
    swap = edit(model, inv, source=src, target=tgt, control="prompt_swap", cfg=CFG)
    for control in ("p2p", "pnp"):
        res = edit(model, inv, source=src, target=tgt, control=control, cfg=CFG)
        assert torch.equal(res.source["samples"], swap.source["samples"])
        assert not torch.equal(res.target["samples"], swap.target["samples"])


def test_local_blend_keeps_the_source_outside_the_mask(setup):
    model, _, src, tgt, inv = setup
    res = edit(model, inv, source=src, target=tgt, control="p2p", cfg=CFG, blend_words=("circle", "square",
               "triangle", "cross"), blend_threshold=0.6)
    m = res.mask.expand_as(res.target["samples"]) > 0.5
    assert 0 < int(m[:, 0].sum()) < m[:, 0].numel()
    assert torch.equal(res.target["samples"][~m], res.source["samples"][~m])


def test_bad_names_and_options_say_what_to_do(setup):
    model, _, src, tgt, inv = setup
    with pytest.raises(ul.UnsamplingError, match="did you mean 'p2p'"):
        edit(model, inv, source=src, target=tgt, control="p2pp")
    with pytest.raises(ul.UnsamplingError, match="did you mean 'cross_steps'"):
        edit(model, inv, source=src, target=tgt, control="p2p", cross_step=0.5)
    with pytest.raises(ul.UnsamplingError, match=r"option cross_steps must be in \[0, 1\], got 2.0"):
        edit(model, inv, source=src, target=tgt, control="p2p", cross_steps=2.0)
    with pytest.raises(ul.UnsamplingError, match="p2p_refine"):
        edit(model, inv, source=src, target=[t + " big" for t in tgt], control="p2p")
    with pytest.raises(ul.UnsamplingError, match="decoder blocks"):
        edit(model, inv, source=src, target=tgt, control="pnp", feature_layer="up_blocks.9")
    with pytest.raises(ul.UnsamplingError, match="words to reweight"):
        edit(model, inv, source=src, target=tgt, control="p2p_reweight", scale=2.0)


def test_standard_protocol_with_direct_inversion(setup):
    model, latent, src, tgt, _ = setup
    res = edit_image(model, latent, source=src, target=tgt, method="negative_prompt", steps=STEPS, cfg=CFG, direct=True)
    assert res.direct and res.inversion_nfe == STEPS and res.nfe == STEPS
    torch.testing.assert_close(res.source["samples"], latent["samples"], rtol=0, atol=1e-5)


def test_the_readme_editing_block_runs(setup):
    import re
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## Editing with attention control"):], re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    res = namespace["res"]
    assert res.direct and res.network_calls == 20 and namespace["edited"].shape == (4, 32, 32, 3)
    plt.close("all")
