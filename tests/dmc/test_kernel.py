"""The attention kernels over pages: fused vs batched matmul, native vs split-K PyTorch."""

import pytest
import torch

from dynacomp.dmc import DMCConfig, convert
from dynacomp.dmc.cache import DMCLayer, native
from dynacomp.dmc.cache.paged import page_attention_bmm, page_attention_fused

from .tiny import decode_step_by_step, half_merging_bias, tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_page_attention_matches_the_batched_matmul_one(dtype):
    """The CPU kernel and the portable path agree, with partial and empty pages."""
    torch.manual_seed(0)
    queries, keys, values = torch.randn(6, 3, 16), torch.randn(6, 8, 16, dtype=dtype), torch.randn(6, 8, 16, dtype=dtype)
    valid = torch.ones(6, 8, dtype=torch.bool)
    valid[1, 5:] = False
    valid[4] = False
    fused_out, fused_lse = page_attention_fused(queries.to(dtype), keys, values, valid, 0.25)
    out, lse = page_attention_bmm(queries.to(dtype), keys, values, valid, 0.25)
    assert torch.equal(fused_lse[4], lse[4]) and fused_lse[4].isneginf().all()
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fused_lse[valid.any(1)], lse[valid.any(1)], **tolerance)
    torch.testing.assert_close(fused_out[valid.any(1)], out[valid.any(1)], **tolerance)


@pytest.mark.parametrize("head_dim", native.HEAD_SIZES)
def test_native_decode_kernel_matches_the_page_path(head_dim):
    """Ragged rows (empty, a partial page, several pages out of pool order) read alike by the
    native kernel and by the split-K PyTorch path."""
    torch.manual_seed(0)
    layer = DMCLayer(page_size=8, window=2)
    layer.lazy_initialization(torch.zeros(2, 3, 1, head_dim))
    layer.reserve(2)
    counts = torch.tensor([0, 5, 8, 19, 40, 1])
    for row in torch.randperm(6).tolist():
        slots = torch.arange(int(counts[row]))
        layer._write(torch.full_like(slots, row), slots, torch.randn(len(slots), head_dim),
                     torch.randn(len(slots), head_dim))
    queries = torch.randn(6, 3, head_dim)
    assert native.supports(layer._k_pool)
    kernel = native.paged_decode_attention(queries, layer._k_pool, layer._v_pool, layer._block_table, counts, 0.125)
    reference, _ = layer.attend_split_k(torch.arange(6), queries, counts, 0.125, with_lse=False)
    assert torch.equal(kernel[0], torch.zeros(3, head_dim))
    torch.testing.assert_close(kernel, reference, atol=1e-5, rtol=1e-5)


def test_decoding_through_the_native_kernel_equals_the_teacher_forced_pass():
    model = tiny_model(head_dim=64)
    ids = torch.randint(0, 97, (2, 40))
    convert(model, DMCConfig(decision_bias=half_merging_bias(model, ids), window=4, page_size=4))
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits
    decoded, cache = decode_step_by_step(model, ids, prefix=9)
    assert native.supports(cache.layers[0]._k_pool)
    assert (teacher_forced - decoded).abs().max() <= 1e-4
    assert cache.stats().compression_ratio > 1.5
