"""The sampler registry: ComfyUI's names mapped to our functions and what they promise."""
from __future__ import annotations

from ..errors import UnsamplingError, check_choice
from . import ode
from .base import SamplerSpec

_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("euler", ode.sample_euler, deterministic=True, order=1),
    # ComfyUI's "ddim" is euler (plus an inpainting-noise seed the Unsampler never passes).
    SamplerSpec("ddim", ode.sample_euler, deterministic=True, order=1, note="ComfyUI's ddim is euler"),
)

SAMPLER_SPECS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
SAMPLERS: tuple[str, ...] = tuple(SAMPLER_SPECS)
INVERTIBLE_SAMPLERS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.deterministic)


def get_sampler(name: str, *, invertible: bool = False) -> SamplerSpec:
    """The registry entry for `name`; with `invertible`, refuse samplers that inject noise."""
    check_choice(name, SAMPLERS, what="sampler")
    spec = SAMPLER_SPECS[name]
    if invertible and not spec.deterministic:
        raise UnsamplingError(
            f"sampler {name!r} injects random noise at every step, so it cannot run backwards: on increasing "
            f"sigmas it yields an x0 estimate, fresh noise or NaN instead of the inverted latent. Unsample with a "
            f"deterministic sampler instead: {', '.join(INVERTIBLE_SAMPLERS)}. (resample accepts {name!r}.)"
        )
    return spec
