"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op thread: on a shared 2-core machine, small multi-threaded ops are erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
