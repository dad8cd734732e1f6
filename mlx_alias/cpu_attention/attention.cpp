// Fused scaled dot-product attention for MLX's CPU backend, float32, and its backward pass.
//
// Why: outside macOS MLX's CPU exp and reductions are scalar and single-threaded, so an
// attention over SAM3's 5,184 image tokens spent most of its time in the softmax (see
// mlx_alias/model/common.py). Here each thread takes blocks of query rows of one (batch, head)
// pair and computes scores, softmax and the weighted values while the block is in cache, with
// register-tiled kernels (kernels.h). The backward pass recomputes the probabilities from the
// forward pass's log-sum-exp, one thread per (batch, head) pair.
//
// Inputs: q [P, L, D], k [P, S, D], v [P, S, Dv] and optionally an additive mask [P, 1 or L, S],
// all row-contiguous float32. Outputs: [P, L, Dv] = softmax(scale * q k^T + mask) v, and the
// rows' log-sum-exp [P, L] (what a backward pass needs to recompute the probabilities). A row
// whose scores are all -inf gives NaN, as MLX's and torch's attention do.

#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
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

#include "kernels.h"

namespace nb = nanobind;
namespace mx = mlx::core;

namespace {

// scale * row[j:j+8] + mask[j:j+8], and -inf past the last key (padding weighs exactly 0).
inline f8 scaled_scores(const Shapes& s, float scale, const float* mask, const float* row, int j) {
  f8 x = load(row + j) * scale;
  if (j + 8 <= s.keys) return mask ? x + load(mask + j) : x;
  for (int i = 0; i < 8; ++i) x[i] = j + i < s.keys ? x[i] + (mask ? mask[j + i] : 0.0f) : -INFINITY;
  return x;
}

// One row in place: scale, add the mask, subtract the maximum, exponentiate. Returns the row's
// maximum and sum.
std::pair<float, float> softmax_numerators(const Shapes& s, float scale, const float* mask, float* row) {
  f8 top = splat(-INFINITY);
  for (int j = 0; j < s.keys_padded; j += 8) {
    const f8 x = scaled_scores(s, scale, mask, row, j);
    store(row + j, x);
    top = maximum(top, x);
  }
  float m = -INFINITY;
  for (int i = 0; i < 8; ++i) m = std::max(m, top[i]);
  f8 total = {};
  const f8 shift = splat(m);
  for (int j = 0; j < s.keys_padded; j += 8) {
    const f8 e = exp_nonpositive(load(row + j) - shift);
    store(row + j, e);
    total += e;
  }
  float sum = 0.0f;
  for (int i = 0; i < 8; ++i) sum += total[i];
  return {m, sum};
}

// Query rows per block: its scores fill about kScoreBlockFloats (whole tiles).
int block_rows(const Shapes& s) {
  return std::max<int>(kTileRows, kScoreBlockFloats / s.keys_padded / kTileRows * kTileRows);
}

const float* mask_row(const Shapes& s, const float* mask, int pair, int row) {
  if (!s.mask_rows) return nullptr;
  return mask + (size_t(pair) * s.mask_rows + (s.mask_rows == 1 ? 0 : std::min(row, s.rows - 1))) * s.keys;
}

void attend(const Shapes& s, float scale, const float* q, const float* k, const float* v, const float* mask,
            float* out, float* log_sum_exp) {
  // Per pair, k^T [D, keys_padded] and v [keys_padded, value_padded], zero-padded to whole tiles.
  const size_t kt_size = size_t(s.dim) * s.keys_padded, vp_size = size_t(s.keys_padded) * s.value_padded;
  std::vector<float> packed(size_t(s.pairs) * (kt_size + vp_size));
  in_parallel(s.pairs, [&](int p) {
    float* kt = packed.data() + size_t(p) * (kt_size + vp_size);
    transpose(k + size_t(p) * s.keys * s.dim, s.keys, s.dim, s.dim, kt, s.keys_padded, s.dim);
    pad(v + size_t(p) * s.keys * s.value_dim, s.keys, s.value_dim, kt + kt_size, s.keys_padded, s.value_padded);
  });
  const int block = block_rows(s), blocks_per_pair = (s.rows + block - 1) / block;
  in_parallel(s.pairs * blocks_per_pair, [&](int task) {
    const int p = task / blocks_per_pair, r0 = task % blocks_per_pair * block;
    const int n = std::min(block, s.rows - r0), padded = round_up(n, kTileRows);
    const float* kt = packed.data() + size_t(p) * (kt_size + vp_size);
    thread_local std::vector<float> scores, queries, values;
    thread_local std::vector<std::pair<float, float>> totals;
    scores.resize(size_t(padded) * s.keys_padded);
    queries.resize(size_t(padded) * s.dim);
    values.resize(size_t(padded) * s.value_padded);
    totals.resize(padded);
    pad(q + (size_t(p) * s.rows + r0) * s.dim, n, s.dim, queries.data(), padded, s.dim);
    gemm_rows(queries.data(), s.dim, padded, kt, s.keys_padded, s.dim, s.keys_padded, scores.data(), s.keys_padded,
              false);
    for (int r = 0; r < padded; ++r)
      totals[r] = softmax_numerators(s, scale, mask_row(s, mask, p, r0 + r), scores.data() + size_t(r) * s.keys_padded);
    gemm_rows(scores.data(), s.keys_padded, padded, kt + kt_size, s.value_padded, s.keys_padded, s.value_padded,
              values.data(), s.value_padded, false);
    for (int r = 0; r < n; ++r) {
      float* o = out + (size_t(p) * s.rows + r0 + r) * s.value_dim;
      const auto [top, total] = totals[r];
      log_sum_exp[size_t(p) * s.rows + r0 + r] = top + std::log(total);
      const float inverse = 1.0f / total;
      for (int c = 0; c < s.value_dim; ++c) o[c] = values[size_t(r) * s.value_padded + c] * inverse;
    }
  });
}

// The gradients of attend's output: with P the probabilities (recomputed from the log-sum-exp),
// dP = dO v^T, dS = P (dP - rowsum(dO * O)), dq = scale dS k, dk = scale dS^T q, dv = P^T dO and,
// for an additive mask, dmask = dS (summed over rows for a [P, 1, S] mask). One thread per pair:
// dk and dv sum over all its query blocks.
void attend_backward(const Shapes& s, float scale, const float* q, const float* k, const float* v,
                     const float* mask, const float* out, const float* log_sum_exp, const float* d_out, float* dq,
                     float* dk, float* dv, float* d_mask) {
  const int dim16 = round_up(s.dim, kTileCols), block = block_rows(s);
  const int keys6 = round_up(s.keys_padded, kTileRows);  // key rows of dk and dv, in whole tiles
  in_parallel(s.pairs, [&](int p) {
    const float *kp = k + size_t(p) * s.keys * s.dim, *vp = v + size_t(p) * s.keys * s.value_dim;
    std::vector<float> kt(size_t(s.dim) * s.keys_padded), vt(size_t(s.value_dim) * s.keys_padded),
        k_rows(size_t(s.keys_padded) * dim16), k_grad(size_t(keys6) * dim16, 0.0f),
        v_grad(size_t(keys6) * s.value_padded, 0.0f);
    transpose(kp, s.keys, s.dim, s.dim, kt.data(), s.keys_padded, s.dim);
    transpose(vp, s.keys, s.value_dim, s.value_dim, vt.data(), s.keys_padded, s.value_dim);
    pad(kp, s.keys, s.dim, k_rows.data(), s.keys_padded, dim16);
    if (d_mask) std::fill(d_mask + size_t(p) * s.mask_rows * s.keys, d_mask + size_t(p + 1) * s.mask_rows * s.keys, 0.0f);
    std::vector<float> probs, d_scores, flipped, queries, grads, q_grad, delta;
    for (int r0 = 0; r0 < s.rows; r0 += block) {
      const int n = std::min(block, s.rows - r0), padded = round_up(n, kTileRows);
      const size_t row0 = size_t(p) * s.rows + r0;
      probs.resize(size_t(padded) * s.keys_padded);
      d_scores.resize(size_t(padded) * s.keys_padded);
      flipped.resize(size_t(keys6) * padded);
      q_grad.resize(size_t(padded) * dim16);
      queries.resize(size_t(padded) * dim16);
      pad(q + row0 * s.dim, n, s.dim, queries.data(), padded, dim16);
      grads.resize(size_t(padded) * s.value_padded);
      pad(d_out + row0 * s.value_dim, n, s.value_dim, grads.data(), padded, s.value_padded);
      delta.assign(padded, 0.0f);
      for (int r = 0; r < n; ++r)
        for (int c = 0; c < s.value_dim; ++c)
          delta[r] += d_out[(row0 + r) * s.value_dim + c] * out[(row0 + r) * s.value_dim + c];
      gemm_rows(queries.data(), dim16, padded, kt.data(), s.keys_padded, s.dim, s.keys_padded, probs.data(),
                s.keys_padded, false);
      gemm_rows(grads.data(), s.value_padded, padded, vt.data(), s.keys_padded, s.value_dim, s.keys_padded,
                d_scores.data(), s.keys_padded, false);
      for (int r = 0; r < padded; ++r) {
        float *pr = probs.data() + size_t(r) * s.keys_padded, *dr = d_scores.data() + size_t(r) * s.keys_padded;
        if (r >= n) {  // padding rows: no gradient
          std::fill(pr, pr + s.keys_padded, 0.0f);
          std::fill(dr, dr + s.keys_padded, 0.0f);
          continue;
        }
        const float* m = mask_row(s, mask, p, r0 + r);
        const f8 lse = splat(log_sum_exp[row0 + r]), dd = splat(delta[r]);
        for (int j = 0; j < s.keys_padded; j += 8) {
          const f8 prob = exp_nonpositive(scaled_scores(s, scale, m, pr, j) - lse);
          store(pr + j, prob);
          store(dr + j, prob * (load(dr + j) - dd));
        }
        if (d_mask) {
          float* g = d_mask + (size_t(p) * s.mask_rows + (s.mask_rows == 1 ? 0 : r0 + r)) * s.keys;
          for (int j = 0; j < s.keys; ++j) g[j] += dr[j];
        }
      }
      gemm_rows(d_scores.data(), s.keys_padded, padded, k_rows.data(), dim16, s.keys_padded, dim16, q_grad.data(),
                dim16, false);
      for (int r = 0; r < n; ++r)
        for (int d = 0; d < s.dim; ++d) dq[(row0 + r) * s.dim + d] = scale * q_grad[size_t(r) * dim16 + d];
      transpose(probs.data(), padded, s.keys_padded, s.keys_padded, flipped.data(), padded, keys6);
      gemm_rows(flipped.data(), padded, keys6, grads.data(), s.value_padded, padded, s.value_padded, v_grad.data(),
                s.value_padded, true);
      transpose(d_scores.data(), padded, s.keys_padded, s.keys_padded, flipped.data(), padded, keys6);
      gemm_rows(flipped.data(), padded, keys6, queries.data(), dim16, padded, dim16, k_grad.data(), dim16, true);
    }
    for (int j = 0; j < s.keys; ++j) {
      for (int d = 0; d < s.dim; ++d) dk[(size_t(p) * s.keys + j) * s.dim + d] = scale * k_grad[size_t(j) * dim16 + d];
      for (int c = 0; c < s.value_dim; ++c)
        dv[(size_t(p) * s.keys + j) * s.value_dim + c] = v_grad[size_t(j) * s.value_padded + c];
    }
  });
}

// The forward pass (inputs q, k, v[, mask]; outputs attention, log-sum-exp) or its backward
// (inputs q, k, v, attention, log-sum-exp, cotangent[, mask]; outputs dq, dk, dv[, dmask]).
class CpuAttention : public mx::Primitive {
 public:
  CpuAttention(mx::Stream stream, float scale, bool backward)
      : mx::Primitive(stream), scale_(scale), backward_(backward) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    for (const auto& x : inputs)
      if (!x.flags().row_contiguous || x.dtype() != mx::float32)
        throw std::invalid_argument("cpu_attention: inputs must be row-contiguous float32");
    const auto &q = inputs[0], &k = inputs[1], &v = inputs[2];
    const size_t mask_input = backward_ ? 6 : 3;
    const float* mask = inputs.size() > mask_input ? inputs[mask_input].data<float>() : nullptr;
    Shapes s{int(q.shape(0)), int(q.shape(1)), int(k.shape(1)), int(q.shape(2)), int(v.shape(2)),
             mask ? int(inputs[mask_input].shape(1)) : 0, round_up(int(k.shape(1)), kTileCols),
             round_up(int(v.shape(2)), kTileCols)};
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& x : inputs) encoder.set_input_array(x);
    std::vector<float*> o;
    for (auto& x : outputs) {
      x.set_data(mx::allocator::malloc(x.nbytes()));
      encoder.set_output_array(x);
      o.push_back(x.data<float>());
    }
    std::vector<const float*> in;
    for (const auto& x : inputs) in.push_back(x.data<float>());
    encoder.dispatch([s, scale = scale_, backward = backward_, in, o, mask]() {
      if (backward)
        attend_backward(s, scale, in[0], in[1], in[2], mask, in[3], in[4], in[5], o[0], o[1], o[2],
                        mask ? o[3] : nullptr);
      else
        attend(s, scale, in[0], in[1], in[2], mask, o[0], o[1]);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("cpu_attention runs on the CPU only");
  }

  const char* name() const override { return backward_ ? "CpuAttentionBackward" : "CpuAttention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& that = static_cast<const CpuAttention&>(other);
    return scale_ == that.scale_ && backward_ == that.backward_;
  }

 private:
  float scale_;
  bool backward_;
};

void check_shapes(const mx::array& q, const mx::array& k, const mx::array& v, const std::optional<mx::array>& mask) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 || k.shape(0) != q.shape(0) || v.shape(0) != q.shape(0) ||
      k.shape(2) != q.shape(2) || v.shape(1) != k.shape(1))
    throw std::invalid_argument("cpu_attention: expected q [P, L, D], k [P, S, D], v [P, S, Dv]");
  if (mask && (mask->ndim() != 3 || mask->shape(0) != q.shape(0) || mask->shape(2) != k.shape(1) ||
               (mask->shape(1) != 1 && mask->shape(1) != q.shape(1))))
    throw std::invalid_argument("cpu_attention: expected an additive mask [P, 1 or L, S]");
}

std::vector<mx::array> cpu_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                                     std::optional<mx::array> mask) {
  check_shapes(q, k, v, mask);
  std::vector<mx::array> inputs{q, k, v};
  if (mask) inputs.push_back(*mask);
  return mx::array::make_arrays({{q.shape(0), q.shape(1), v.shape(2)}, {q.shape(0), q.shape(1)}},
                               {mx::float32, mx::float32},
                               std::make_shared<CpuAttention>(mx::default_stream(mx::Device::cpu), scale, false),
                               inputs);
}

std::vector<mx::array> cpu_attention_backward(const mx::array& q, const mx::array& k, const mx::array& v,
                                              const mx::array& out, const mx::array& log_sum_exp,
                                              const mx::array& d_out, float scale, std::optional<mx::array> mask) {
  check_shapes(q, k, v, mask);
  if (out.shape() != mx::Shape{q.shape(0), q.shape(1), v.shape(2)} || d_out.shape() != out.shape() ||
      log_sum_exp.shape() != mx::Shape{q.shape(0), q.shape(1)})
    throw std::invalid_argument("cpu_attention_backward: out and d_out must be [P, L, Dv], log_sum_exp [P, L]");
  std::vector<mx::array> inputs{q, k, v, out, log_sum_exp, d_out};
  std::vector<mx::Shape> shapes{q.shape(), k.shape(), v.shape()};
  if (mask) {
    inputs.push_back(*mask);
    shapes.push_back(mask->shape());
  }
  return mx::array::make_arrays(shapes, std::vector<mx::Dtype>(shapes.size(), mx::float32),
                               std::make_shared<CpuAttention>(mx::default_stream(mx::Device::cpu), scale, true),
                               inputs);
}

}  // namespace

NB_MODULE(_cpu_attention, m) {
  m.doc() = "Fused float32 attention for MLX's CPU backend (see attention.cpp).";
  m.def("cpu_attention", &cpu_attention, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scale"),
        nb::arg("mask") = nb::none(),
        "(softmax(scale * q k^T + mask) v, the rows' log-sum-exp) for row-contiguous float32 q [P, L, D], "
        "k [P, S, D], v [P, S, Dv] and an optional additive mask [P, 1 or L, S].");
  m.def("cpu_attention_backward", &cpu_attention_backward, nb::arg("q"), nb::arg("k"), nb::arg("v"),
        nb::arg("out"), nb::arg("log_sum_exp"), nb::arg("d_out"), nb::arg("scale"), nb::arg("mask") = nb::none(),
        "[dq, dk, dv(, dmask)]: cpu_attention's gradients for the cotangent d_out of its output.");
  // The MLX this was compiled against: its C++ ABI must be the one loaded (checked on import).
  m.attr("mlx_version") = std::to_string(MLX_VERSION_MAJOR) + "." + std::to_string(MLX_VERSION_MINOR) + "." +
                          std::to_string(MLX_VERSION_PATCH);
}
