// DMC decoding attention on CPU in one call per layer: every row (sequence x KV head) reads its
// pages through its block table with an online softmax, so no per-page partial results are
// written out and combined, and K/V are read once for all query heads of the KV head.
// Built by dynacomp/dmc/native.py; the PyTorch path in cache.py computes the same thing.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Rows [begin, end). Head size is a template parameter so the inner loops vectorise fully.
template <int DIM>
void attend_rows(const float* __restrict__ queries, const float* __restrict__ k_pool,
                 const float* __restrict__ v_pool, const int64_t* block_table, const int64_t* visible,
                 float* __restrict__ out, int64_t heads, int64_t page, int64_t pages_per_row,
                 int64_t pool_pages, float scale, int64_t begin, int64_t end) {
  std::vector<float> prob_buffer(heads * page), running_max(heads), denominator(heads);
  float* __restrict__ prob = prob_buffer.data();
  for (int64_t row = begin; row < end; ++row) {
    const int64_t slots = visible[row];
    const float* __restrict__ q = queries + row * heads * DIM;
    float* __restrict__ o = out + row * heads * DIM;
    // Finite start (not -inf): the unit is compiled with -ffast-math, which assumes no infinities.
    std::fill(running_max.begin(), running_max.end(), -1e30f);
    std::fill(denominator.begin(), denominator.end(), 0.0f);
    for (int64_t first = 0; first < slots; first += page) {
      const int64_t id = block_table[row * pages_per_row + first / page];
      TORCH_CHECK(id >= 0 && id < pool_pages, "DMC block table points outside the page pool");
      const int64_t count = std::min(page, slots - first);
      const float* __restrict__ k = k_pool + id * page * DIM;
      const float* __restrict__ v = v_pool + id * page * DIM;
      for (int64_t m = 0; m < heads; ++m) {
        const float* __restrict__ qm = q + m * DIM;
        float* __restrict__ p = prob + m * page;
        for (int64_t j = 0; j < count; ++j) {
          float dot = 0.0f;
          for (int d = 0; d < DIM; ++d) dot += qm[d] * k[j * DIM + d];
          p[j] = dot * scale;
        }
        float page_max = running_max[m];
        for (int64_t j = 0; j < count; ++j) page_max = std::max(page_max, p[j]);
        const float correction = std::exp(running_max[m] - page_max);
        float sum = 0.0f;
        for (int64_t j = 0; j < count; ++j) {
          p[j] = std::exp(p[j] - page_max);
          sum += p[j];
        }
        denominator[m] = denominator[m] * correction + sum;
        running_max[m] = page_max;
        float acc[DIM];
        for (int d = 0; d < DIM; ++d) acc[d] = o[m * DIM + d] * correction;
        for (int64_t j = 0; j < count; ++j)
          for (int d = 0; d < DIM; ++d) acc[d] += p[j] * v[j * DIM + d];
        for (int d = 0; d < DIM; ++d) o[m * DIM + d] = acc[d];
      }
    }
    for (int64_t m = 0; m < heads; ++m)
      if (denominator[m] > 0.0f)
        for (int d = 0; d < DIM; ++d) o[m * DIM + d] /= denominator[m];
  }
}

// queries (R, M, D), k_pool and v_pool (N, P, D), block_table (R, pages) int64, visible (R,)
// int64: softmax attention of row r's M queries over its first visible[r] slots. Returns
// (R, M, D); rows with nothing visible get 0.
torch::Tensor paged_decode_attention(const torch::Tensor& queries, const torch::Tensor& k_pool,
                                     const torch::Tensor& v_pool, const torch::Tensor& block_table,
                                     const torch::Tensor& visible, double scale) {
  for (const auto* t : {&queries, &k_pool, &v_pool, &block_table, &visible})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "paged_decode_attention: contiguous CPU tensors");
  TORCH_CHECK(queries.scalar_type() == at::kFloat && k_pool.scalar_type() == at::kFloat &&
              v_pool.scalar_type() == at::kFloat, "paged_decode_attention: float32 queries and pools");
  TORCH_CHECK(block_table.scalar_type() == at::kLong && visible.scalar_type() == at::kLong,
              "paged_decode_attention: int64 block table and slot counts");
  TORCH_CHECK(queries.dim() == 3 && k_pool.dim() == 3 && k_pool.sizes() == v_pool.sizes() &&
              k_pool.size(2) == queries.size(2) && block_table.size(0) == queries.size(0) &&
              visible.numel() == queries.size(0), "paged_decode_attention: shapes do not match");
  const int64_t rows = queries.size(0), heads = queries.size(1), dim = queries.size(2);
  auto out = torch::zeros_like(queries);
  auto run = [&](auto attend) {
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      attend(queries.data_ptr<float>(), k_pool.data_ptr<float>(), v_pool.data_ptr<float>(),
             block_table.data_ptr<int64_t>(), visible.data_ptr<int64_t>(), out.data_ptr<float>(), heads,
             k_pool.size(1), block_table.size(1), k_pool.size(0), static_cast<float>(scale), begin, end);
    });
  };
  switch (dim) {
    case 64: run(attend_rows<64>); break;
    case 128: run(attend_rows<128>); break;
    default: TORCH_CHECK(false, "paged_decode_attention: head size 64 or 128, got ", dim);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("paged_decode_attention", &paged_decode_attention);
}
