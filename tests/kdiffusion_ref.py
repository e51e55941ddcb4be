"""k-diffusion's `sampling.py` as an independent reference, loaded without its package `__init__`.

`k_diffusion/__init__.py` imports torchvision, wandb and more; the samplers need none of that. We
find the installed package directory, register a stub `k_diffusion` package whose `utils` holds only
`append_dims`, execute `sampling.py` as `k_diffusion.sampling`, and then take the stub out of
`sys.modules` again (the loaded module keeps its references), so a real `import k_diffusion` elsewhere
is unaffected. Tests skip with a clear message when k-diffusion or its imports are missing.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from functools import lru_cache
from pathlib import Path

import pytest
import torch


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append singleton dimensions to x until it has target_dims dimensions (k-diffusion's helper)."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


@lru_cache(maxsize=1)
def _load() -> types.ModuleType | str:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return "k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)"
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    if not path.is_file():
        return f"k-diffusion has no sampling.py at {path}"
    for dep in ("torchdiffeq", "torchsde", "tqdm", "scipy"):
        if importlib.util.find_spec(dep) is None:
            return f"k-diffusion's sampling.py needs {dep!r} (pip install torchdiffeq torchsde)"

    names = ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling")
    saved = {n: sys.modules.get(n) for n in names}
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(path.parent)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = append_dims
    package.utils = utils
    module_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils, "k_diffusion.sampling": module})
    try:
        module_spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


def kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's sampling module, or skip the calling test with the reason."""
    loaded = _load()
    if isinstance(loaded, str):
        pytest.skip(loaded)
    return loaded
