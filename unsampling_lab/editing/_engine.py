"""The engine names the editing layer uses, in one place (issue 18 renames the engine's private helpers:
`_read_latent`, `_wrap`, `_check_common`; switch them here)."""
from __future__ import annotations

from ..engine import _check_common as check_common  # noqa: F401
from ..engine import _read_latent as read_latent  # noqa: F401
from ..engine import _wrap as wrap  # noqa: F401
from ..engine import resample, resample_sigmas, state_dtype, unsampled  # noqa: F401
