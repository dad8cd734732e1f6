// The building blocks of attention.cpp: 8-float vectors in GCC vector extensions (AVX2/FMA or
// NEON, as compiled), a vectorised exp, one register-tiled matrix-multiply tile, packing, threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

constexpr int kTileRows = 6;   // 6 rows x 16 columns: 12 accumulators, 2 loads, 1 broadcast
constexpr int kTileCols = 16;  // two 8-float vectors
constexpr int kKeyChunk = 256;  // inner length per pass of gemm_rows: a [256, 16] slice of b in L1
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

// c[r, 0:n] = (accumulate ? c[r, 0:n] : 0) + sum_{i < k} a[r * lda + i] b[i * ldb + 0:n] for the
// kTileRows rows r of a tile; n a multiple of kTileCols. Every product here is one of these.
void gemm_tile(const float* a, size_t lda, const float* b, size_t ldb, int k, int n, float* c, size_t ldc,
               bool accumulate) {
  for (int j = 0; j < n; j += kTileCols) {
    f8 acc[kTileRows][2] = {};
    if (accumulate)
      for (int r = 0; r < kTileRows; ++r) {
        acc[r][0] = load(c + r * ldc + j);
        acc[r][1] = load(c + r * ldc + j + 8);
      }
    for (int i = 0; i < k; ++i) {
      const f8 b0 = load(b + i * ldb + j), b1 = load(b + i * ldb + j + 8);
      for (int r = 0; r < kTileRows; ++r) {
        const f8 x = splat(a[r * lda + i]);
        acc[r][0] += x * b0;
        acc[r][1] += x * b1;
      }
    }
    for (int r = 0; r < kTileRows; ++r) {
      store(c + r * ldc + j, acc[r][0]);
      store(c + r * ldc + j + 8, acc[r][1]);
    }
  }
}

// c (+)= a b for a [rows, k] (rows a multiple of kTileRows) and b [k, n], in chunks of kKeyChunk
// along k so that each chunk of b stays in L1 across the row tiles.
void gemm_rows(const float* a, size_t lda, int rows, const float* b, size_t ldb, int k, int n, float* c,
               size_t ldc, bool accumulate) {
  for (int i0 = 0; i0 < k; i0 += kKeyChunk)
    for (int r = 0; r < rows; r += kTileRows)
      gemm_tile(a + r * lda + i0, lda, b + i0 * ldb, ldb, std::min(kKeyChunk, k - i0), n, c + r * ldc, ldc,
                accumulate || i0 > 0);
}

// dst [dst_rows, ld_dst] = src [rows, cols]^T (src's row stride ld_src), zeros around it.
void transpose(const float* src, int rows, int cols, size_t ld_src, float* dst, size_t ld_dst, int dst_rows) {
  std::fill(dst, dst + dst_rows * ld_dst, 0.0f);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cols; ++j) dst[j * ld_dst + r] = src[r * ld_src + j];
}

// dst [rows_padded, width_padded] = src [rows, width] with zeros around it.
void pad(const float* src, int rows, int width, float* dst, int rows_padded, int width_padded) {
  std::fill(dst, dst + size_t(rows_padded) * width_padded, 0.0f);
  for (int r = 0; r < rows; ++r) std::memcpy(dst + size_t(r) * width_padded, src + size_t(r) * width, sizeof(float) * width);
}

inline int round_up(int x, int to) { return (x + to - 1) / to * to; }

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

}  // namespace
