// DMC decoding attention on CPU in one call per layer: every row (sequence x KV head) reads its
// pages through its block table with an online softmax, so no per-page partial results are
// written out and combined, and K/V are read once for all query heads of the KV head; the next
// page is fetched while one is computed on. Pages are float32, bfloat16 or float16, read in place
// (widened in registers); queries, scores and sums are float32.
// Built by dynacomp/dmc/cache/native.py; the PyTorch path in paged.py computes the same thing.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;   // the build names the CPU capability (native.py)

// One vector of a page's keys or values as float32: float32 is loaded as is, bfloat16 and float16 are
// widened in registers (ATen's conversion: a shift for bfloat16, F16C for float16).
inline Vec load_float(const float* p) { return Vec::loadu(p); }

template <typename T>
Vec load_float(const T* p) {
  Vec out;
  at::vec::load_to_float<T>(p, out);
  return out;
}

// Ask for one slot's lines ahead of their turn: a row's pages lie anywhere in the pool, so the
// hardware's stream prefetcher would only find each next page after its first misses.
template <int DIM, typename T>
void prefetch_slot(const T* slot) {
  for (int64_t byte = 0; byte < DIM * int64_t(sizeof(T)); byte += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(slot) + byte, 0, 2);
}

// Rows [begin, end). Head size is a template parameter so that a head's query and its output
// sums stay in L vector registers (ATen's Vectorized: AVX-512, AVX2 or plain arrays, as built).
template <int DIM, typename T>
void attend_rows(const float* __restrict__ queries, const T* __restrict__ k_pool, const T* __restrict__ v_pool,
                 const int64_t* block_table, const int64_t* visible, float* __restrict__ out, int64_t heads,
                 int64_t page, int64_t pages_per_row, int64_t pool_pages, float scale, int64_t begin, int64_t end) {
  static_assert(DIM % Vec::size() == 0, "a head is whole vectors");
  constexpr int L = DIM / Vec::size();
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
      const T* __restrict__ k = k_pool + id * page * DIM;
      const T* __restrict__ v = v_pool + id * page * DIM;
      // The page read after this one (this row's next, or the next row's first), fetched a slot
      // per key while this page is computed on.
      const int64_t after = first + page < slots ? row * pages_per_row + first / page + 1
                            : row + 1 < end && visible[row + 1] > 0 ? (row + 1) * pages_per_row : -1;
      const int64_t next = after >= 0 ? block_table[after] : -1;
      const bool fetch = next >= 0 && next < pool_pages;
      // Scores of all the KV head's query heads a key at a time, so each key is loaded once.
      for (int64_t j = 0; j < count; ++j) {
        if (fetch) {
          prefetch_slot<DIM>(k_pool + (next * page + j) * DIM);
          prefetch_slot<DIM>(v_pool + (next * page + j) * DIM);
        }
        Vec key[L];
        for (int l = 0; l < L; ++l) key[l] = load_float(k + j * DIM + l * Vec::size());
        for (int64_t m = 0; m < heads; ++m) {
          const float* qm = q + m * DIM;
          Vec dot = Vec::loadu(qm) * key[0];
          for (int l = 1; l < L; ++l) dot = at::vec::fmadd(Vec::loadu(qm + l * Vec::size()), key[l], dot);
          prob[m * page + j] = at::vec::vec_reduce_all<float>(std::plus<Vec>(), dot) * scale;
        }
      }
      for (int64_t m = 0; m < heads; ++m) {
        float* __restrict__ p = prob + m * page;
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
        Vec acc[L];
        for (int l = 0; l < L; ++l) acc[l] = Vec::loadu(o + m * DIM + l * Vec::size()) * Vec(correction);
        for (int64_t j = 0; j < count; ++j) {
          const Vec weight(p[j]);
          for (int l = 0; l < L; ++l) acc[l] = at::vec::fmadd(weight, load_float(v + j * DIM + l * Vec::size()), acc[l]);
        }
        for (int l = 0; l < L; ++l) acc[l].store(o + m * DIM + l * Vec::size());
      }
    }
    for (int64_t m = 0; m < heads; ++m)
      if (denominator[m] > 0.0f)
        for (int d = 0; d < DIM; ++d) o[m * DIM + d] /= denominator[m];
  }
}

// First row of each of `parts` runs of rows holding about equal work (slots read, plus a page's
// worth per row for its fixed cost), and `rows` at the end: DMC's rows are ragged, one head may
// keep ten times the slots of another, so equal counts of rows would leave threads idle.
std::vector<int64_t> balanced_split(const int64_t* visible, int64_t rows, int64_t page, int64_t parts) {
  std::vector<int64_t> work(rows + 1, 0);
  for (int64_t r = 0; r < rows; ++r) work[r + 1] = work[r] + visible[r] + page;
  std::vector<int64_t> first(parts + 1, rows);
  for (int64_t part = 0; part < parts; ++part)
    first[part] = std::lower_bound(work.begin(), work.end() - 1, work[rows] * part / parts) - work.begin();
  return first;
}

// queries (R, M, D) float32, k_pool and v_pool (N, P, D) float32 / bfloat16 / float16, block_table
// (R, pages) int64, visible (R,) int64: softmax attention of row r's M queries over its first
// visible[r] slots. Returns (R, M, D) float32; rows with nothing visible get 0.
torch::Tensor paged_decode_attention(const torch::Tensor& queries, const torch::Tensor& k_pool,
                                     const torch::Tensor& v_pool, const torch::Tensor& block_table,
                                     const torch::Tensor& visible, double scale) {
  for (const auto* t : {&queries, &k_pool, &v_pool, &block_table, &visible})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "paged_decode_attention: contiguous CPU tensors");
  TORCH_CHECK(queries.scalar_type() == at::kFloat && k_pool.scalar_type() == v_pool.scalar_type(),
              "paged_decode_attention: float32 queries and pools of one dtype");
  TORCH_CHECK(block_table.scalar_type() == at::kLong && visible.scalar_type() == at::kLong,
              "paged_decode_attention: int64 block table and slot counts");
  TORCH_CHECK(queries.dim() == 3 && k_pool.dim() == 3 && k_pool.sizes() == v_pool.sizes() &&
              k_pool.size(2) == queries.size(2) && block_table.size(0) == queries.size(0) &&
              visible.numel() == queries.size(0), "paged_decode_attention: shapes do not match");
  const int64_t rows = queries.size(0), heads = queries.size(1), dim = queries.size(2), page = k_pool.size(1);
  auto out = torch::zeros_like(queries);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  const auto first = balanced_split(visible.data_ptr<int64_t>(), rows, page, parts);
  auto run = [&](auto attend, const auto* k, const auto* v) {
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part)
        attend(queries.data_ptr<float>(), k, v, block_table.data_ptr<int64_t>(), visible.data_ptr<int64_t>(),
               out.data_ptr<float>(), heads, page, block_table.size(1), k_pool.size(0), static_cast<float>(scale),
               first[part], first[part + 1]);
    });
  };
  auto by_dim = [&](auto typed) {
    using T = decltype(typed);
    const T* k = k_pool.data_ptr<T>();
    const T* v = v_pool.data_ptr<T>();
    switch (dim) {
      case 64: run(attend_rows<64, T>, k, v); break;
      case 128: run(attend_rows<128, T>, k, v); break;
      default: TORCH_CHECK(false, "paged_decode_attention: head size 64 or 128, got ", dim);
    }
  };
  switch (k_pool.scalar_type()) {
    case at::kFloat: by_dim(float()); break;
    case at::kBFloat16: by_dim(at::BFloat16()); break;
    case at::kHalf: by_dim(at::Half()); break;
    default: TORCH_CHECK(false, "paged_decode_attention: float32, bfloat16 or float16 pools, got ", k_pool.scalar_type());
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("paged_decode_attention", &paged_decode_attention);
}
