"""Fixtures for every test tree (tests/ and plugins/*/tests, which pytest runs from here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): tiny
    graphs gain nothing from threads, and on a busy 2-core machine OpenMP spin-waiting made them
    ~50-100x slower. The previous thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
