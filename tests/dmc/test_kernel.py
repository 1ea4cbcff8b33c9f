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


def ragged_layer(head_dim: int) -> tuple[DMCLayer, torch.Tensor]:
    """A float32 layer of six rows: empty, a partial page, one page, several pages written out of
    pool order, and one slot; and the rows' slot counts."""
    torch.manual_seed(0)
    layer = DMCLayer(page_size=8, window=2)
    layer.lazy_initialization(torch.zeros(2, 3, 1, head_dim))
    layer.reserve(2)
    counts = torch.tensor([0, 5, 8, 19, 40, 1])
    for row in torch.randperm(6).tolist():
        slots = torch.arange(int(counts[row]))
        layer._write(torch.full_like(slots, row), slots, torch.randn(len(slots), head_dim),
                     torch.randn(len(slots), head_dim))
    return layer, counts


@pytest.mark.parametrize("dtype", native.DTYPES)
@pytest.mark.parametrize("head_dim", native.HEAD_SIZES)
def test_native_decode_kernel_matches_the_page_path(head_dim, dtype):
    """Ragged rows and three query heads per KV head (GQA) read alike by the native kernel and by
    the split-K PyTorch path in float32 over the same stored values: a bfloat16 or float16 page
    widens to float32 exactly, and the kernel sums in float32, so only summation order differs."""
    layer, counts = ragged_layer(head_dim)
    layer._k_pool, layer._v_pool = layer._k_pool.to(dtype), layer._v_pool.to(dtype)
    queries = torch.randn(6, 3, head_dim)
    assert native.supports(layer._k_pool)
    kernel = native.paged_decode_attention(queries, layer._k_pool, layer._v_pool, layer._block_table, counts, 0.125)
    layer._k_pool, layer._v_pool = layer._k_pool.float(), layer._v_pool.float()
    reference, _ = layer.attend_split_k(torch.arange(6), queries, counts, 0.125, with_lse=False)
    assert kernel.dtype == torch.float32 and torch.equal(kernel[0], torch.zeros(3, head_dim))
    torch.testing.assert_close(kernel, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_pages_cost_no_more_than_their_rounding(dtype):
    """Against float32 pages of the unrounded values, the error stays within what rounding each
    stored element allows. Rounding to nearest keeps ``u`` = 2^-8 (bfloat16, 8 significant bits)
    or 2^-11 (float16) relative error per element. A key off by u|k| moves the score
    scale * q.k by at most E = u * scale * sum_d |q_d k_d|, so each softmax weight moves by a
    factor within exp(+-2E), and the output (a weighted mean of values each off by u|v|) by at
    most (exp(2E) - 1 + u) * max|v| per row; 1e-5 more for float32 summation."""
    layer, counts = ragged_layer(64)
    queries = torch.randn(6, 3, 64)
    scale, u = 0.125, torch.finfo(dtype).eps / 2
    exact = native.paged_decode_attention(queries, layer._k_pool, layer._v_pool, layer._block_table, counts, scale)
    rounded = native.paged_decode_attention(queries, layer._k_pool.to(dtype), layer._v_pool.to(dtype),
                                            layer._block_table, counts, scale)
    rows = torch.arange(6)
    for row in rows[counts > 0].tolist():
        keys, values = layer._gather(rows[row:row + 1], torch.arange(int(counts[row]))[None])
        energy = u * scale * (queries[row].abs() @ keys[0].abs().T).max()
        bound = (torch.exp(2 * energy) - 1 + u) * values.abs().max() + 1e-5
        assert (rounded[row] - exact[row]).abs().max() <= bound


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


def test_native_decode_kernel_gives_each_row_the_same_result_on_any_number_of_threads():
    """Rows are split between threads by the slots they read; a row's sums do not depend on where it falls."""
    layer, counts = ragged_layer(64)
    queries = torch.randn(6, 3, 64)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            outs.append(native.paged_decode_attention(queries, layer._k_pool, layer._v_pool, layer._block_table,
                                                      counts, 0.125))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], out) for out in outs[1:])


@pytest.mark.parametrize("kernel", ["native", "pytorch"])
@pytest.mark.parametrize("model_dtype, cache_dtype", [(torch.bfloat16, None), (torch.float32, torch.bfloat16),
                                                      (torch.float16, None)])
def test_decoding_through_low_precision_pages_equals_the_teacher_forced_pass(model_dtype, cache_dtype, kernel,
                                                                             monkeypatch):
    """The pages take the model's dtype, or the one the cache is given, and either path reads them.
    The decode and the teacher-forced pass round in different places (pages, queries, the teacher
    forced pass's matrix products), each a relative u per element (2^-8 for bfloat16, 2^-11 for
    float16), and a low-precision model's logits are rounded too: they agree within a few u at the
    logits' scale."""
    if kernel == "pytorch":
        monkeypatch.setattr(native, "supports", lambda pool: False)
    model = tiny_model(head_dim=64)
    ids = torch.randint(0, 97, (2, 40))
    convert(model, DMCConfig(force_cr=2, window=4, page_size=4)).to(model_dtype)
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits.float()
    decoded, cache = decode_step_by_step(model, ids, prefix=9, dtype=cache_dtype)
    pages = cache_dtype or model_dtype
    assert cache.layers[0]._k_pool.dtype == pages and native.supports(cache.layers[0]._k_pool) == (kernel == "native")
    u = max(torch.finfo(model_dtype).eps, torch.finfo(pages).eps) / 2
    assert (decoded.float() - teacher_forced).abs().max() <= 4 * u * teacher_forced.abs().max()
