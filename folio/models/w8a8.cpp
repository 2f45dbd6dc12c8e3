// Int8 weights times int8 activations, accumulated in int32: the matrix products of the
// `w8a8` decode path. Built and loaded at first use by folio/models/w8a8.py, which says
// why and how; this file registers one operator, folio::w8a8_linear.
//
// Notation: M rows of activations, K inputs, N outputs.
//
// Weights are quantized per output row, w[n, k] ~= q[n, k] * scale[n] with q in
// [-127, 127], and stored in blocks of 16 output rows by 4 inputs: (N16, K4, 16, 4),
// so that one 64-byte load holds 4 consecutive inputs of 16 rows. Activations are
// quantized per row at call time, x[m, k] ~= (u[m, k] - 128) * s[m] with u in [1, 255],
// s[m] = max_k |x[m, k]| / 127. Then
//
//   y[m, n] = s[m] * scale[n] * (sum_k u[m, k] q[n, k] - 128 * sum_k q[n, k]),
//
// where the sum over k is exact in int32 and the second term (wsum) is computed once,
// when the weights are packed. With AVX512-VNNI one instruction (vpdpbusd) multiplies 64
// unsigned activation bytes by 64 signed weight bytes and adds each run of 4 products to
// one of 16 int32 sums: here, the 4 inputs of one block's 16 rows. Without it a portable
// loop computes the same integers, and both end in the same float operations in the same
// order, so the two give bit-identical results.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FOLIO_X86 1
#endif

namespace {

constexpr int64_t kRows = 16;   // output rows per block: one 512-bit register of int32 sums
constexpr int64_t kGroup = 4;   // blocks per task: they share each broadcast activation
constexpr int64_t kBatch = 4;   // activation rows per pass over a task's weights

// One row's quantization, in three parts that both forms below share: the rest of the
// scan for the largest magnitude (and a probe that is NaN if any entry is NaN or
// infinite), the step, and the scalar rounding of the rest of the row plus padding.
inline void scan_rest(const float* row, int64_t k0, int64_t K, float& amax, float& probe) {
  for (int64_t k = k0; k < K; ++k) {
    amax = std::max(amax, std::fabs(row[k]));
    probe += row[k] * 0.f;
  }
}

// s[m] = max|x| / 127 (1 for a zero row); NaN where the row is not finite, so that the
// output row is NaN too (the sampler refuses non-finite logits).
inline float row_step(float amax, float probe) {
  if (!(probe == 0.f) || !std::isfinite(amax)) return std::numeric_limits<float>::quiet_NaN();
  return amax > 0.f ? amax / 127.f : 1.f;
}

inline void round_rest(const float* row, int64_t k0, int64_t K, int64_t Kp, float step,
                       uint8_t* out) {
  if (std::isnan(step)) {
    std::fill(out, out + Kp, uint8_t{128});  // the whole row: a zero
    return;
  }
  const float inv = 1.f / step;
  for (int64_t k = k0; k < K; ++k) {
    const float r = std::nearbyint(row[k] * inv);  // |r| <= 127
    out[k] = static_cast<uint8_t>(static_cast<int32_t>(r) + 128);
  }
  std::fill(out + K, out + Kp, uint8_t{128});  // padding: a zero
}

// Rows of x (M, K) to unsigned bytes u (M, Kp), zero point 128, and their steps s (M,).
void quantize(const float* x, int64_t M, int64_t K, int64_t Kp, uint8_t* u, float* s) {
  for (int64_t m = 0; m < M; ++m) {
    float amax = 0.f, probe = 0.f;
    scan_rest(x + m * K, 0, K, amax, probe);
    s[m] = row_step(amax, probe);
    round_rest(x + m * K, 0, K, Kp, s[m], u + m * Kp);
  }
}

struct Args {
  const uint8_t* u;      // (M, Kp) quantized activations
  const float* s;        // (M,) their steps
  const int8_t* w;       // (N16, K4, 16, 4) weights
  const int32_t* wsum;   // (N16 * 16,) sum over k of each weight row
  const float* scale;    // (N,) the weight rows' steps
  float* y;              // (M, N) output
  int64_t M, K4, N16, N;
};

// y[m, c] = float(sum - 128 * wsum[c]) * scale[c] * s[m], in this order on every path.
inline float finish(int32_t sum, int32_t wsum, float scale, float s) {
  return static_cast<float>(sum - wsum * 128) * scale * s;
}

void portable(const Args& a, int64_t b0, int64_t b1) {
  const int64_t Kp = a.K4 * 4;
  for (int64_t b = b0; b < b1; ++b) {
    const int8_t* wb = a.w + b * a.K4 * kRows * 4;
    for (int64_t m = 0; m < a.M; ++m) {
      const uint8_t* u = a.u + m * Kp;
      int32_t sum[kRows] = {0};
      for (int64_t k4 = 0; k4 < a.K4; ++k4) {
        const int8_t* w4 = wb + k4 * kRows * 4;
        for (int64_t r = 0; r < kRows; ++r) {
          for (int64_t j = 0; j < 4; ++j) {
            sum[r] += static_cast<int32_t>(u[k4 * 4 + j]) * static_cast<int32_t>(w4[r * 4 + j]);
          }
        }
      }
      for (int64_t r = 0; r < kRows; ++r) {
        const int64_t c = b * kRows + r;
        if (c < a.N) a.y[m * a.N + c] = finish(sum[r], a.wsum[c], a.scale[c], a.s[m]);
      }
    }
  }
}

#ifdef FOLIO_X86
// `quantize` with 16 lanes at a time: the same operations on each element (max, a
// product, round-to-nearest-even under the default MXCSR), so the same bytes.
__attribute__((target("avx512f,avx512bw"))) void quantize_avx512(const float* x, int64_t M,
                                                                  int64_t K, int64_t Kp,
                                                                  uint8_t* u, float* s) {
  const int64_t K16 = K - K % 16;
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    uint8_t* out = u + m * Kp;
    __m512 vmax = _mm512_setzero_ps(), vprobe = _mm512_setzero_ps();
    for (int64_t k = 0; k < K16; k += 16) {
      const __m512 v = _mm512_loadu_ps(row + k);
      vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
      vprobe = _mm512_add_ps(vprobe, _mm512_mul_ps(v, _mm512_setzero_ps()));
    }
    float amax = _mm512_reduce_max_ps(vmax), probe = _mm512_reduce_add_ps(vprobe);
    scan_rest(row, K16, K, amax, probe);
    s[m] = row_step(amax, probe);
    if (!std::isnan(s[m])) {
      const __m512 vinv = _mm512_set1_ps(1.f / s[m]);
      const __m512i zero_point = _mm512_set1_epi32(128);
      for (int64_t k = 0; k < K16; k += 16) {
        const __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), vinv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k),
                         _mm512_cvtepi32_epi8(_mm512_add_epi32(r, zero_point)));
      }
    }
    round_rest(row, K16, K, Kp, s[m], out);
  }
}

bool has_vnni() {
  static const bool yes = __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vnni");
  return yes;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void vnni(const Args& a, int64_t b0,
                                                                  int64_t b1) {
  const int64_t Kp = a.K4 * 4;
  for (int64_t g = b0; g < b1; g += kGroup) {
    const int nb = static_cast<int>(std::min(kGroup, b1 - g));
    const int8_t* wg[kGroup];
    for (int j = 0; j < nb; ++j) wg[j] = a.w + (g + j) * a.K4 * kRows * 4;
    for (int64_t m0 = 0; m0 < a.M; m0 += kBatch) {
      const int mb = static_cast<int>(std::min(kBatch, a.M - m0));
      __m512i acc[kBatch][kGroup];
      for (int i = 0; i < kBatch; ++i)
        for (int j = 0; j < kGroup; ++j) acc[i][j] = _mm512_setzero_si512();
      const int32_t* u4[kBatch];
      for (int i = 0; i < mb; ++i) u4[i] = reinterpret_cast<const int32_t*>(a.u + (m0 + i) * Kp);
      for (int64_t k4 = 0; k4 < a.K4; ++k4) {
        __m512i wv[kGroup];
        for (int j = 0; j < nb; ++j) wv[j] = _mm512_loadu_si512(wg[j] + k4 * kRows * 4);
        for (int i = 0; i < mb; ++i) {
          const __m512i x4 = _mm512_set1_epi32(u4[i][k4]);  // 4 activation bytes, 16 times
          for (int j = 0; j < nb; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], x4, wv[j]);
        }
      }
      for (int j = 0; j < nb; ++j) {
        const int64_t c0 = (g + j) * kRows;
        const int64_t left = std::min<int64_t>(kRows, a.N - c0);
        const __mmask16 keep = static_cast<__mmask16>((1u << left) - 1u);
        const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(a.wsum + c0), 7);  // * 128
        const __m512 sc = _mm512_maskz_loadu_ps(keep, a.scale + c0);
        for (int i = 0; i < mb; ++i) {
          __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][j], corr));
          v = _mm512_mul_ps(_mm512_mul_ps(v, sc), _mm512_set1_ps(a.s[m0 + i]));
          _mm512_mask_storeu_ps(a.y + (m0 + i) * a.N + c0, keep, v);
        }
      }
    }
  }
}
#else
bool has_vnni() { return false; }
#endif

at::Tensor w8a8_linear_impl(const at::Tensor& x_, const at::Tensor& w, const at::Tensor& wsum,
                            const at::Tensor& scale, bool allow_vnni) {
  TORCH_CHECK(x_.dim() == 2 && x_.scalar_type() == at::kFloat, "x must be (M, K) float32");
  TORCH_CHECK(w.dim() == 4 && w.size(2) == kRows && w.size(3) == 4 && w.scalar_type() == at::kChar,
              "w must be (N16, K4, 16, 4) int8");
  TORCH_CHECK(w.is_contiguous() && wsum.is_contiguous() && scale.is_contiguous(),
              "w, wsum and scale must be contiguous");
  const int64_t M = x_.size(0), K = x_.size(1), N16 = w.size(0), K4 = w.size(1);
  const int64_t N = scale.numel();
  TORCH_CHECK(K4 * 4 >= K && K4 * 4 < K + 4, "x has ", K, " inputs, w ", K4 * 4);
  TORCH_CHECK(K < 65536, "at most 65535 inputs (int32 sums)");
  TORCH_CHECK(wsum.scalar_type() == at::kInt && wsum.numel() == N16 * kRows,
              "wsum must be (N16 * 16,) int32");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && N > (N16 - 1) * kRows && N <= N16 * kRows,
              "scale must be (N,) float32 with N in the last block");
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  // The quantized activations live in this thread's scratch, reused call after call
  // (a decode step makes about 25 calls, each allocation a measurable share of one).
  thread_local std::vector<uint8_t> u;
  thread_local std::vector<float> s;
  u.resize(static_cast<size_t>(M * K4 * 4));
  s.resize(static_cast<size_t>(M));
  const bool fast = allow_vnni && has_vnni();
#ifdef FOLIO_X86
  if (fast) {
    quantize_avx512(x.data_ptr<float>(), M, K, K4 * 4, u.data(), s.data());
  } else {
    quantize(x.data_ptr<float>(), M, K, K4 * 4, u.data(), s.data());
  }
#else
  quantize(x.data_ptr<float>(), M, K, K4 * 4, u.data(), s.data());
#endif
  const Args a{u.data(), s.data(), w.data_ptr<int8_t>(), wsum.data_ptr<int32_t>(),
               scale.data_ptr<float>(), y.data_ptr<float>(), M, K4, N16, N};
  // Tasks of kGroup blocks; a thread takes at least ~64 KB of weights, since below that
  // waking a second thread costs more than it saves.
  const int64_t tasks = (N16 + kGroup - 1) / kGroup;
  const int64_t task_bytes = kGroup * K4 * kRows * 4 * std::max<int64_t>(1, M / kBatch);
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / task_bytes);
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    const int64_t b0 = t0 * kGroup, b1 = std::min(N16, t1 * kGroup);
#ifdef FOLIO_X86
    if (fast) {
      vnni(a, b0, b1);
      return;
    }
#endif
    portable(a, b0, b1);
  });
  return y;
}

at::Tensor w8a8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& wsum,
                       const at::Tensor& scale) {
  return w8a8_linear_impl(x, w, wsum, scale, true);
}

at::Tensor w8a8_linear_portable(const at::Tensor& x, const at::Tensor& w,
                                const at::Tensor& wsum, const at::Tensor& scale) {
  return w8a8_linear_impl(x, w, wsum, scale, false);
}

bool w8a8_vnni() { return has_vnni(); }

}  // namespace

TORCH_LIBRARY(folio, m) {
  m.def("w8a8_linear(Tensor x, Tensor w, Tensor wsum, Tensor scale) -> Tensor");
  m.def("w8a8_linear_portable(Tensor x, Tensor w, Tensor wsum, Tensor scale) -> Tensor");
  m.def("w8a8_vnni() -> bool", &w8a8_vnni);
}

TORCH_LIBRARY_IMPL(folio, CPU, m) {
  m.impl("w8a8_linear", &w8a8_linear);
  m.impl("w8a8_linear_portable", &w8a8_linear_portable);
}
