// Fused scaled dot-product attention for MLX's CPU backend, float32.
//
// Why: outside macOS MLX's CPU exp and reductions are scalar and single-threaded, so an
// attention over SAM3's 5,184 image tokens spent most of its time in the softmax (see
// mlx_alias/model/common.py). Here each thread takes blocks of query rows of one (batch, head)
// pair and computes scores, softmax and the weighted values while the block is in cache, with
// register-tiled kernels written in GCC vector extensions (AVX2/FMA or NEON, as compiled).
//
// Inputs: q [P, L, D], k [P, S, D], v [P, S, Dv] and optionally an additive mask [P, 1 or L, S],
// all row-contiguous float32. Outputs: [P, L, Dv] = softmax(scale * q k^T + mask) v, and the
// rows' log-sum-exp [P, L] (what a backward pass needs to recompute the probabilities). A row
// whose scores are all -inf gives NaN, as MLX's and torch's attention do.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "mlx/version.h"

namespace nb = nanobind;
namespace mx = mlx::core;

namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

constexpr int kTileRows = 6;   // 6 rows x 16 columns: 12 accumulators, 2 loads, 1 broadcast
constexpr int kTileCols = 16;  // two 8-float vectors
constexpr int kKeyChunk = 256;  // keys per pass of the value kernel: a [256, 16] slice of v in L1
constexpr size_t kScoreBlockFloats = 1 << 18;  // 1 MB of scores per thread: fastest of 2^15-2^19

inline f8 load(const float* p) {
  f8 x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
inline void store(float* p, f8 x) { std::memcpy(p, &x, sizeof(x)); }
inline f8 splat(float a) { return f8{a, a, a, a, a, a, a, a}; }
inline f8 maximum(f8 a, f8 b) { return a > b ? a : b; }

// exp(x) for x <= 0 as 2^n * 2^f, Cephes' polynomial for 2^f on |f| <= 1/2 (the one MLX's exp
// uses); exponents below -127 are clamped there, where 2^n is written as bits 0: weight 0.
inline f8 exp_nonpositive(f8 x) {
  const f8 t = maximum(x * 1.4426950408889634f, splat(-127.0f));
  const f8 n = (t + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 trick
  const f8 f = t - n;
  f8 p = splat(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const i8 bits = (__builtin_convertvector(n, i8) + 127) << 23;
  f8 power;
  std::memcpy(&power, &bits, sizeof(power));
  return p * power;
}

struct Shapes {
  int pairs, rows, keys, dim, value_dim, mask_rows;  // mask_rows: 0 (no mask), 1 or rows
  int keys_padded, value_padded;  // keys to a multiple of 16; value width to a multiple of 16
};

// Per pair, k transposed to [D, keys_padded] (zero columns) and v to [keys_padded, value_padded]
// (zero rows and columns), so that the kernels run on whole tiles.
void pack_pair(const Shapes& s, const float* k, const float* v, float* kt, float* vp) {
  std::fill(kt, kt + size_t(s.dim) * s.keys_padded, 0.0f);
  std::fill(vp, vp + size_t(s.keys_padded) * s.value_padded, 0.0f);
  for (int j = 0; j < s.keys; ++j) {
    for (int d = 0; d < s.dim; ++d) kt[size_t(d) * s.keys_padded + j] = k[size_t(j) * s.dim + d];
    std::memcpy(vp + size_t(j) * s.value_padded, v + size_t(j) * s.value_dim, sizeof(float) * s.value_dim);
  }
}

// scores[r, j] = scale * sum_d q[r, d] kt[d, j] for a tile of kTileRows rows (q rows padded).
void score_tile(const Shapes& s, const float* q, const float* kt, float* scores) {
  for (int j = 0; j < s.keys_padded; j += kTileCols) {
    f8 acc[kTileRows][2] = {};
    for (int d = 0; d < s.dim; ++d) {
      const f8 k0 = load(kt + size_t(d) * s.keys_padded + j);
      const f8 k1 = load(kt + size_t(d) * s.keys_padded + j + 8);
      for (int r = 0; r < kTileRows; ++r) {
        const f8 a = splat(q[r * s.dim + d]);
        acc[r][0] += a * k0;
        acc[r][1] += a * k1;
      }
    }
    for (int r = 0; r < kTileRows; ++r) {
      store(scores + size_t(r) * s.keys_padded + j, acc[r][0]);
      store(scores + size_t(r) * s.keys_padded + j + 8, acc[r][1]);
    }
  }
}

// One row in place: scale, add the mask, subtract the maximum, exponentiate; padding keys get 0.
// Returns the row's maximum and sum.
std::pair<float, float> softmax_numerators(const Shapes& s, float scale, const float* mask, float* row) {
  const int full = s.keys - s.keys % 8;
  f8 top = splat(-INFINITY);
  for (int j = 0; j < full; j += 8) {
    f8 x = load(row + j) * scale;
    if (mask) x += load(mask + j);
    store(row + j, x);
    top = maximum(top, x);
  }
  float m = -INFINITY;
  for (int i = 0; i < 8; ++i) m = std::max(m, top[i]);
  for (int j = full; j < s.keys; ++j) {
    row[j] = row[j] * scale + (mask ? mask[j] : 0.0f);
    m = std::max(m, row[j]);
  }
  f8 total = {};
  const f8 shift = splat(m);
  for (int j = 0; j < full; j += 8) {
    const f8 e = exp_nonpositive(load(row + j) - shift);
    store(row + j, e);
    total += e;
  }
  float sum = 0.0f;
  for (int i = 0; i < 8; ++i) sum += total[i];
  for (int j = full; j < s.keys_padded; j += 8) {  // the last partial vector and the padding
    f8 x = splat(-INFINITY);
    for (int i = 0; i < 8 && j + i < s.keys; ++i) x[i] = row[j + i];
    const f8 e = exp_nonpositive(x - shift);
    store(row + j, e);
    for (int i = 0; i < 8; ++i) sum += e[i];
  }
  return {m, sum};
}

// out[r, c] += sum_j p[r, j] vp[j, c] over keys [j0, j1), a tile of kTileRows rows.
void value_tile(const Shapes& s, const float* p, const float* vp, int j0, int j1, float* out) {
  for (int c = 0; c < s.value_padded; c += kTileCols) {
    f8 acc[kTileRows][2];
    for (int r = 0; r < kTileRows; ++r) {
      acc[r][0] = load(out + r * s.value_padded + c);
      acc[r][1] = load(out + r * s.value_padded + c + 8);
    }
    for (int j = j0; j < j1; ++j) {
      const f8 v0 = load(vp + size_t(j) * s.value_padded + c);
      const f8 v1 = load(vp + size_t(j) * s.value_padded + c + 8);
      for (int r = 0; r < kTileRows; ++r) {
        const f8 a = splat(p[size_t(r) * s.keys_padded + j]);
        acc[r][0] += a * v0;
        acc[r][1] += a * v1;
      }
    }
    for (int r = 0; r < kTileRows; ++r) {
      store(out + r * s.value_padded + c, acc[r][0]);
      store(out + r * s.value_padded + c + 8, acc[r][1]);
    }
  }
}

template <class Work>
void in_parallel(int tasks, Work work) {
  const int threads = std::max(1, std::min<int>(tasks, std::thread::hardware_concurrency()));
  std::atomic<int> next{0};
  auto loop = [&] {
    for (int t = next++; t < tasks; t = next++) work(t);
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(loop);
  loop();
  for (auto& thread : pool) thread.join();
}

void attend(const Shapes& s, float scale, const float* q, const float* k, const float* v, const float* mask,
            float* out, float* log_sum_exp) {
  const size_t kt_size = size_t(s.dim) * s.keys_padded, vp_size = size_t(s.keys_padded) * s.value_padded;
  std::vector<float> packed(size_t(s.pairs) * (kt_size + vp_size));
  in_parallel(s.pairs, [&](int p) {
    float* kt = packed.data() + size_t(p) * (kt_size + vp_size);
    pack_pair(s, k + size_t(p) * s.keys * s.dim, v + size_t(p) * s.keys * s.value_dim, kt, kt + kt_size);
  });
  const int block = std::max<int>(kTileRows, kScoreBlockFloats / s.keys_padded / kTileRows * kTileRows);
  const int blocks_per_pair = (s.rows + block - 1) / block;
  in_parallel(s.pairs * blocks_per_pair, [&](int task) {
    const int p = task / blocks_per_pair, r0 = task % blocks_per_pair * block;
    const int n = std::min(block, s.rows - r0), tiles = (n + kTileRows - 1) / kTileRows;
    const float* kt = packed.data() + size_t(p) * (kt_size + vp_size);
    const float* vp = kt + kt_size;
    thread_local std::vector<float> scores, queries, values;
    thread_local std::vector<std::pair<float, float>> totals;
    scores.resize(size_t(tiles) * kTileRows * s.keys_padded);
    queries.assign(size_t(tiles) * kTileRows * s.dim, 0.0f);
    values.assign(size_t(tiles) * kTileRows * s.value_padded, 0.0f);
    totals.resize(size_t(tiles) * kTileRows);
    std::memcpy(queries.data(), q + (size_t(p) * s.rows + r0) * s.dim, sizeof(float) * n * s.dim);
    for (int t = 0; t < tiles; ++t)
      score_tile(s, queries.data() + size_t(t) * kTileRows * s.dim, kt,
                 scores.data() + size_t(t) * kTileRows * s.keys_padded);
    for (int r = 0; r < tiles * kTileRows; ++r) {
      const float* mask_row = nullptr;
      if (s.mask_rows)
        mask_row = mask + (size_t(p) * s.mask_rows + (s.mask_rows == 1 ? 0 : std::min(r0 + r, s.rows - 1))) * s.keys;
      totals[r] = softmax_numerators(s, scale, mask_row, scores.data() + size_t(r) * s.keys_padded);
    }
    for (int j0 = 0; j0 < s.keys_padded; j0 += kKeyChunk)
      for (int t = 0; t < tiles; ++t)
        value_tile(s, scores.data() + size_t(t) * kTileRows * s.keys_padded, vp, j0,
                   std::min(j0 + kKeyChunk, s.keys_padded), values.data() + size_t(t) * kTileRows * s.value_padded);
    for (int r = 0; r < n; ++r) {
      float* o = out + (size_t(p) * s.rows + r0 + r) * s.value_dim;
      const auto [top, total] = totals[r];
      log_sum_exp[size_t(p) * s.rows + r0 + r] = top + std::log(total);
      const float inverse = 1.0f / total;
      for (int c = 0; c < s.value_dim; ++c) o[c] = values[size_t(r) * s.value_padded + c] * inverse;
    }
  });
}

class CpuAttention : public mx::Primitive {
 public:
  CpuAttention(mx::Stream stream, float scale) : mx::Primitive(stream), scale_(scale) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto &q = inputs[0], &k = inputs[1], &v = inputs[2];
    auto &out = outputs[0], &log_sum_exp = outputs[1];
    for (const auto& x : inputs)
      if (!x.flags().row_contiguous || x.dtype() != mx::float32)
        throw std::invalid_argument("cpu_attention: inputs must be row-contiguous float32");
    out.set_data(mx::allocator::malloc(out.nbytes()));
    log_sum_exp.set_data(mx::allocator::malloc(log_sum_exp.nbytes()));
    Shapes s{int(q.shape(0)), int(q.shape(1)), int(k.shape(1)), int(q.shape(2)), int(v.shape(2)),
             inputs.size() > 3 ? int(inputs[3].shape(1)) : 0, 0, 0};
    s.keys_padded = (s.keys + kTileCols - 1) / kTileCols * kTileCols;
    s.value_padded = (s.value_dim + kTileCols - 1) / kTileCols * kTileCols;
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& x : inputs) encoder.set_input_array(x);
    encoder.set_output_array(out);
    encoder.set_output_array(log_sum_exp);
    encoder.dispatch([s, scale = scale_, q = q.data<float>(), k = k.data<float>(), v = v.data<float>(),
                      mask = inputs.size() > 3 ? inputs[3].data<float>() : nullptr, o = out.data<float>(), lse = log_sum_exp.data<float>()]() {
      attend(s, scale, q, k, v, mask, o, lse);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_attention runs on the CPU only");
  }

  const char* name() const override { return "CpuAttention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return scale_ == static_cast<const CpuAttention&>(other).scale_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {{inputs[0].shape(0), inputs[0].shape(1), inputs[2].shape(2)}, {inputs[0].shape(0), inputs[0].shape(1)}};
  }

 private:
  float scale_;
};

std::vector<mx::array> cpu_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                        std::optional<mx::array> mask) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 || k.shape(0) != q.shape(0) || v.shape(0) != q.shape(0) ||
      k.shape(2) != q.shape(2) || v.shape(1) != k.shape(1))
    throw std::invalid_argument("cpu_attention: expected q [P, L, D], k [P, S, D], v [P, S, Dv]");
  std::vector<mx::array> inputs{q, k, v};
  if (mask) {
    if (mask->ndim() != 3 || mask->shape(0) != q.shape(0) || mask->shape(2) != k.shape(1) ||
        (mask->shape(1) != 1 && mask->shape(1) != q.shape(1)))
      throw std::invalid_argument("cpu_attention: expected an additive mask [P, 1 or L, S]");
    inputs.push_back(*mask);
  }
  const mx::Stream stream = mx::default_stream(mx::Device::cpu);
  return mx::array::make_arrays({{q.shape(0), q.shape(1), v.shape(2)}, {q.shape(0), q.shape(1)}},
                               {mx::float32, mx::float32}, std::make_shared<CpuAttention>(stream, scale), inputs);
}

}  // namespace

NB_MODULE(_cpu_attention, m) {
  m.doc() = "Fused float32 attention for MLX's CPU backend (see attention.cpp).";
  m.def("cpu_attention", &cpu_attention, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scale"),
        nb::arg("mask") = nb::none(),
        "(softmax(scale * q k^T + mask) v, the rows' log-sum-exp) for row-contiguous float32 q [P, L, D], "
        "k [P, S, D], v [P, S, Dv] and an optional additive mask [P, 1 or L, S].");
  // The MLX this was compiled against: its C++ ABI must be the one loaded (checked on import).
  m.attr("mlx_version") = std::to_string(MLX_VERSION_MAJOR) + "." + std::to_string(MLX_VERSION_MINOR) + "." +
                          std::to_string(MLX_VERSION_PATCH);
}
