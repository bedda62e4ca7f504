"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture(scope='module')
def one_thread():
    """One torch CPU thread for a module's tests, restored afterwards: tiny models run fastest on one thread on
    CI's two shared cores, and float results on CPU depend on the thread count (subprocesses use one too)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
