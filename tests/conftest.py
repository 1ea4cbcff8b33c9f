import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (converted from its GGUF on the first run)."""
    from dynacomp.models import load_causal_lm
    return load_causal_lm("smollm2-135m")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and far slower on several when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
