// A float32 linear layer whose every output is summed in one fixed order: y = x W^T + b,
// the same bits for a row whatever the other rows are. Built and loaded at first use by
// folio/models/invariant.py, which says why; this file registers one operator,
// folio::invariant_linear.
//
// Notation: M rows of activations, K inputs, N outputs.
//
// Each output y[m, n] is one dot product of x[m, :] with w[n, :], summed in 16 lanes:
// lane l adds the products at k = l, l + 16, l + 32, ... in increasing k, the last
// partial block of 16 read with a mask (missing products are +0), and the 16 lane sums
// are then added in one fixed tree, then the bias. Nothing in that sequence depends on
// M, on which tile an output falls in, or on which thread computes it, so row m of the
// result is the same computed alone or among any other rows (batch invariance by
// construction, as in "Defeating Nondeterminism in LLM Inference": no split over K, one
// reduction order for every shape). The tiles (4 rows by 4 outputs, to reuse each load)
// and the split of N over threads change only which outputs are computed together.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FOLIO_X86 1
#endif

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kTileM = 4;
constexpr int64_t kTileN = 4;
constexpr int64_t kGrain = 16;  // outputs per thread task

// The fixed tree over 16 lane sums: halves, then quarters, ... (the same on every path).
inline float reduce16(const float* s) {
  float h[8], q[4];
  for (int i = 0; i < 8; ++i) h[i] = s[i] + s[i + 8];
  for (int i = 0; i < 4; ++i) q[i] = h[i] + h[i + 4];
  return (q[0] + q[2]) + (q[1] + q[3]);
}

struct Args {
  const float* x;  // (M, K)
  const float* w;  // (N, K)
  const float* b;  // (N,) or null
  float* y;        // (M, N)
  int64_t M, K, N;
};

inline float finish(const Args& a, const float* lanes, int64_t n) {
  const float dot = reduce16(lanes);
  return a.b != nullptr ? dot + a.b[n] : dot;
}

// The portable form: the same lanes, the same order, one output at a time.
void portable(const Args& a, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < a.M; ++m) {
    const float* xm = a.x + m * a.K;
    for (int64_t n = n0; n < n1; ++n) {
      const float* wn = a.w + n * a.K;
      float lanes[kLanes] = {0.f};
      for (int64_t k = 0; k < a.K; k += kLanes) {
        const int64_t width = std::min(kLanes, a.K - k);
        for (int64_t l = 0; l < width; ++l) lanes[l] += xm[k + l] * wn[k + l];
      }
      a.y[m * a.N + n] = finish(a, lanes, n);
    }
  }
}

#ifdef FOLIO_X86
// One tile of up to 4 rows by 4 outputs: RM * RN accumulators of 16 lanes each.
template <int RM, int RN>
__attribute__((target("avx512f"))) inline void tile_avx512(const Args& a, int64_t m0,
                                                            int64_t n0) {
  __m512 acc[RM][RN];
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < a.K; k += kLanes) {
    const int64_t width = std::min(kLanes, a.K - k);
    const __mmask16 mask = static_cast<__mmask16>((1u << width) - 1u);
    __m512 wv[RN];
    for (int j = 0; j < RN; ++j) wv[j] = _mm512_maskz_loadu_ps(mask, a.w + (n0 + j) * a.K + k);
    for (int i = 0; i < RM; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, a.x + (m0 + i) * a.K + k);
      // multiply, then add: two roundings, as the portable form does
      for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_mul_ps(xv, wv[j]));
    }
  }
  alignas(64) float lanes[kLanes];
  for (int i = 0; i < RM; ++i) {
    for (int j = 0; j < RN; ++j) {
      _mm512_store_ps(lanes, acc[i][j]);
      a.y[(m0 + i) * a.N + n0 + j] = finish(a, lanes, n0 + j);
    }
  }
}

template <int RM>
__attribute__((target("avx512f"))) inline void row_tiles_avx512(const Args& a, int64_t m0,
                                                                 int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kTileN <= n1; n += kTileN) tile_avx512<RM, kTileN>(a, m0, n);
  for (; n < n1; ++n) tile_avx512<RM, 1>(a, m0, n);
}

__attribute__((target("avx512f"))) void fast(const Args& a, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + kTileM <= a.M; m += kTileM) row_tiles_avx512<kTileM>(a, m, n0, n1);
  for (; m < a.M; ++m) row_tiles_avx512<1>(a, m, n0, n1);
}

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }
#else
void fast(const Args& a, int64_t n0, int64_t n1) { portable(a, n0, n1); }
bool has_avx512() { return false; }
#endif

at::Tensor invariant_linear(const at::Tensor& x, const at::Tensor& w,
                            const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "invariant_linear: x (M, K) and w (N, K) expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "invariant_linear: float32 expected");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "invariant_linear: CPU tensors expected");
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == w.size(0),
                "invariant_linear: float32 bias of N entries expected");
    bc = bias->contiguous();
  }
  at::Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  const Args a{xc.data_ptr<float>(), wc.data_ptr<float>(),
               bc.defined() ? bc.data_ptr<float>() : nullptr, y.data_ptr<float>(),
               x.size(0), x.size(1), w.size(0)};
  if (a.M == 0 || a.N == 0) return y;
  const bool vector = has_avx512();
  at::parallel_for(0, a.N, kGrain, [&](int64_t n0, int64_t n1) {
    if (vector) {
      fast(a, n0, n1);
    } else {
      portable(a, n0, n1);
    }
  });
  return y;
}

bool invariant_avx512() { return has_avx512(); }

}  // namespace

TORCH_LIBRARY(folio_invariant, m) {
  m.def("linear(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("avx512() -> bool");
}

TORCH_LIBRARY_IMPL(folio_invariant, CPU, m) { m.impl("linear", &invariant_linear); }

TORCH_LIBRARY_IMPL(folio_invariant, CompositeExplicitAutograd, m) {
  m.impl("avx512", &invariant_avx512);
}
