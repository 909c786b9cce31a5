"""Settings for captum's vendored unit tests (see README.md).

captum's tests are ``unittest.TestCase`` classes deriving from captum's ``BaseTest``, which seeds
the RNGs in ``setUp``; they need nothing from ``tests/conftest.py`` beyond what pytest gives any
test. This conftest keeps them on one thread so their timings on a shared CI box stay stable.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
