import os
import socket
import sys

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models on shared cores: intra-op threads cost more than they give (measured: docs/benchmarks.md).
    Files that want it: pytestmark = usefixtures."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def free_port():
    """A TCP port free on this machine now, for a DDP test's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env(rank, world_size, port):
    """Make this process rank `rank` of a local gloo group, as torchrun would; one thread per rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def exit_worker():
    """End a DDP test worker (mp.spawn) once its stage has returned, its checkpoints on disk and its process
    group destroyed, without the interpreter's teardown: there gloo's threads can still race Python's
    finalisation and abort the process (SIGABRT, "terminate called without an active exception"), failing a
    test whose work was done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
