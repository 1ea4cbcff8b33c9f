import pytest
from torch.utils.flop_counter import FlopCounterMode

from dynacomp.dtp import SOURCES, DTPConfig
from dynacomp.dtp.flops import forward_flops, train_step_flops
from tests.dtp.tiny import random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_and_train_step_flops_of_a_small_config_by_hand():
    """D 4, F 8, V 5, one layer per stack, 2 rows of 6 characters, fixed groups of 3 (2 closed)."""
    config = DTPConfig(boundaries="fixed", fixed_k=3, n_pre=1, n_mid=1, n_post=1, d_model=4, n_heads=2, d_ff=8,
                       vocab_size=5)
    # A layer on n positions, per row: q/k/v 2*n*4*12, output 2*n*4*4, content scores, position
    # scores and values 3 * 2*n*n*4, feed-forward 2 * 2*n*4*8; for both rows the positions 2*n*4*4.
    full = 2 * (2 * 6 * 4 * 12 + 2 * 6 * 4 * 4 + 3 * 2 * 6 * 6 * 4 + 2 * 2 * 6 * 4 * 8) + 2 * 6 * 4 * 4
    middle = 2 * (2 * 3 * 4 * 12 + 2 * 3 * 4 * 4 + 3 * 2 * 3 * 3 * 4 + 2 * 2 * 3 * 4 * 8) + 2 * 3 * 4 * 4  # null + 2 groups
    pool = 2 * (6 * 4 + 2 * 4)
    upsample = 2 * 6 * 4
    head = 2 * 2 * 6 * 4 * 5
    assert (full, middle) == (4992, 2064)
    assert forward_flops(config, rows=2, length=6, groups=2) == 2 * full + middle + pool + upsample + head == 12640
    assert train_step_flops(config, rows=2, length=6, groups=2) == 3 * 12640

    vanilla = DTPConfig(boundaries="none", n_pre=1, n_mid=1, n_post=1, d_model=4, n_heads=2, d_ff=8, vocab_size=5)
    assert forward_flops(vanilla, rows=2, length=6) == 3 * full + head
    gumbel = DTPConfig(boundaries="gumbel", n_pre=1, n_mid=1, n_post=1, d_model=4, n_heads=2, d_ff=8, vocab_size=5)
    predictor = 2 * (2 * 6 * 4 * 8 + 2 * 6 * 8)
    assert forward_flops(gumbel, rows=2, length=6, groups=2) == 12640 + predictor


@pytest.mark.parametrize("source", SOURCES)
def test_matmul_flops_equal_what_torch_counts_in_a_forward_pass(source):
    """The count's matrix products are the model's own (torch's counter skips pooling and upsampling)."""
    model = tiny_model(source).eval()
    ids = random_ids(3, 40, seed=1)
    with FlopCounterMode(display=False) as counter:
        out = model(ids)
    groups = int(out.boundaries.sum(1).max()) if out.boundaries is not None else 0
    D = model.config.d_model
    pool_and_upsample = 3 * (40 * D + groups * D) + 3 * 40 * D if model.config.shortens else 0
    assert counter.get_total_flops() == forward_flops(model.config, 3, 40, groups) - pool_and_upsample
