"""captum's table of generated test cases, with our classes in place of captum's.

captum's ``test_targets.py`` and ``test_hook_removal.py`` generate one test per case of
``captum.testing.attr.helpers.test_config.config`` and per class in its ``algorithms``. The
vendored copies import ``config`` from here instead: each captum class that ``saliency_fast``
exports under the same name is replaced by ours, classes we do not export are dropped, and so are
cases left without a class. A class added to ``saliency_fast`` joins these tests by itself.
"""

from __future__ import annotations

from typing import Any

import saliency_fast
from captum.testing.attr.helpers.test_config import config as captum_config


def ours(captum_class: type) -> type | None:
    """Our class of the same name, or None when we do not export one."""
    name = captum_class.__name__
    return getattr(saliency_fast, name) if name in saliency_fast.__all__ else None


def _swap(case: dict[str, Any]) -> dict[str, Any] | None:
    algorithms = [mine for mine in map(ours, case["algorithms"]) if mine is not None]
    return {**case, "algorithms": algorithms} if algorithms else None


config: list[dict[str, Any]] = [swapped for swapped in map(_swap, captum_config) if swapped is not None]
