import pytest


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (converted from its GGUF on the first run)."""
    from dynacomp.models import load_causal_lm
    return load_causal_lm("smollm2-135m")
