import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models on 2 shared cores: intra-op threads cost more than they give (measured: a tiny PPO run took
    25 s with 2 threads on a loaded machine, 2 s with 1). Files that want it: pytestmark = usefixtures."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
