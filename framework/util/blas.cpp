#include "framework/util/blas.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <vector>

#include "framework/util/share.h"

namespace recsys::util {

namespace {

// Fortran BLAS: column-major, arguments by pointer.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const float*, const float*, const int*, const float*, const int*,
                         const float*, float*, const int*);
using DgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const double*, const double*, const int*, const double*, const int*,
                         const double*, double*, const int*);

// oneDNN's row-major sgemm (dnnl_sgemm: transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C,
// ldc; returns dnnl_status_t, 0 on success).
using DnnlSgemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t);

std::atomic<bool> g_onednn{true};
std::atomic<bool> g_padded_rows{true};

struct Blas {
  SgemmFn sgemm = nullptr;
  DnnlSgemmFn onednn_sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  // Whether concurrent calls from our threads each run on their calling thread: true for an
  // OpenMP or sequential OpenBLAS (inside a parallel region an OpenMP build runs single-threaded)
  // and for BLAS that are not OpenBLAS; false for a pthreads OpenBLAS, whose calls would share
  // its own thread pool.
  bool calls_nest = true;
  Blas() {
    // RTLD_DEFAULT: the process's global lookup order, the same one that bound LibTorch's calls.
    sgemm = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_"));
    dgemm = reinterpret_cast<DgemmFn>(dlsym(RTLD_DEFAULT, "dgemm_"));
    // LibTorch's own oneDNN (Debian's libtorch links libdnnl for its mkldnn operators): found
    // in the process, not linked by us; absent from a LibTorch built without it.
    onednn_sgemm = reinterpret_cast<DnnlSgemmFn>(dlsym(RTLD_DEFAULT, "dnnl_sgemm"));
    using ParallelFn = int (*)();
    if (auto mode = reinterpret_cast<ParallelFn>(dlsym(RTLD_DEFAULT, "openblas_get_parallel")))
      calls_nest = mode() != 1;  // 0 sequential, 1 pthreads, 2 OpenMP
  }
};

const Blas& blas() {
  static const Blas b;
  return b;
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

template <typename S, typename Fn>
bool call(Fn fn, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, S alpha, const S* a, int64_t lda, const S* b,
          int64_t ldb, S beta, S* c, int64_t ldc) {
  if (fn == nullptr) return false;
  if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
      !fits_int(ldc))
    return false;
  if (m == 0 || n == 0) return true;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T. A row-major matrix read as
  // column-major is its transpose, so each operand keeps its own flag, B going first.
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LB = static_cast<int>(ldb > 0 ? ldb : 1), LA = static_cast<int>(lda > 0 ? lda : 1),
            LC = static_cast<int>(ldc);
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  fn(&tb, &ta, &M, &N, &K, &alpha, b, &LB, a, &LA, &beta, c, &LC);
  return true;
}

// Whether oneDNN's sgemm takes a row-major product. Its JIT kernels ran 5-40% faster than
// OpenBLAS 0.3.21's on the models' shapes (reductions of up to a few hundred, docs/performance.md),
// with two exceptions measured on one core: a transposed A whose row stride is a multiple of
// 256 floats (1 KiB) and at least 512 (its copy of A then maps to few cache sets: 31-37 GFLOP/s
// against OpenBLAS's 57-77 for [1024, 64] x [64, 128]), and long reductions into wide results
// (k >= 1024 with n >= 256: 60-70 against 69-84; the rule leaves k > 512 with n > 128 to the
// BLAS). Both libraries compute the same product; only the order of the float additions differs.
bool prefer_onednn(bool trans_a, int64_t n, int64_t k, int64_t lda) {
  if (trans_a && lda >= 512 && lda % 256 == 0) return false;
  return k <= 512 || n <= 128;
}

// Below this many multiply-adds (about 5 us on one core) a product is not worth a second
// thread: the fork and join cost as much as the half it saves (the towers' age and gender
// projections, 11 and 4 rows: paired 0.986 on twotower_ssl against 2^16).
constexpr double kParallelMacs = 1 << 18;

template <typename S>
bool gemm_parallel_impl(bool ta, bool tb, int64_t m, int64_t n, int64_t k, S alpha, const S* a,
                        int64_t lda, const S* b, int64_t ldb, S beta, S* c, int64_t ldc) {
  auto one = [&](int64_t mm, int64_t nn, int64_t kk, const S* aa, const S* bb, S bt, S* cc,
                 int64_t lc) {
    return gemm_rowmajor(ta, tb, mm, nn, kk, alpha, aa, lda, bb, ldb, bt, cc, lc);
  };
  // Inside a parallel region the product is cut only for a side-by-side part's work sharing
  // (util::shared_for), into the chunks it would have on the group's threads outside one.
  const bool in_region = at::in_parallel_region();
  const int64_t threads = in_region ? shared_threads() : at::get_num_threads();
  const double macs = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  if (!has_blas_gemm()) return false;
  if (threads <= 1 || !blas().calls_nest || macs < kParallelMacs || m == 0 || n == 0)
    return one(m, n, k, a, b, beta, c, ldc);
  // Where op(A)'s row r, op(A)'s column j, op(B)'s row j and op(B)'s column q start.
  auto a_row = [&](int64_t r) { return ta ? a + r : a + r * lda; };
  auto a_col = [&](int64_t j) { return ta ? a + j * lda : a + j; };
  auto b_row = [&](int64_t j) { return tb ? b + j : b + j * ldb; };
  auto b_col = [&](int64_t q) { return tb ? b + q * ldb : b + q; };
  std::atomic<bool> ok{true};
  if (k >= 1024 && k >= 4 * std::max(m, n)) {
    // Split-K: each thread's partial product of its slice of k, then C = sum + beta C.
    const int64_t parts = std::min<int64_t>(threads, k / 256);
    std::vector<S> partial(static_cast<size_t>(parts * m * n));
    // Each part on an intra-op thread, or shared with a helper inside a part (for_each_chunk).
    for_each_chunk(parts, [&](int64_t p) {
      const int64_t k0 = p * k / parts, k1 = (p + 1) * k / parts;
      if (!one(m, n, k1 - k0, a_col(k0), b_row(k0), S(0), partial.data() + p * m * n, n))
        ok = false;
    });
    auto sum_rows = [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t q = 0; q < n; ++q) {
          S sum = partial[static_cast<size_t>(r * n + q)];
          for (int64_t p = 1; p < parts; ++p) sum += partial[static_cast<size_t>((p * m + r) * n + q)];
          S& out = c[r * ldc + q];
          out = beta == S(0) ? sum : sum + beta * out;
        }
    };
    if (in_region)
      sum_rows(0, m);
    else
      at::parallel_for(0, m, std::max<int64_t>(1, 4096 / n), sum_rows);
    return ok.load();
  }
  // Rows of C (or columns, for C with few rows) in parts of `grain`, as ATen's parallel_for
  // would cut them on `threads` threads.
  const bool by_rows = m >= 16 * threads || m >= n;
  const int64_t extent = by_rows ? m : n;
  const int64_t grain = (extent + threads - 1) / threads;
  for_each_chunk((extent + grain - 1) / grain, [&](int64_t p) {
    const int64_t i0 = p * grain, i1 = std::min(extent, i0 + grain);
    const bool done = by_rows ? one(i1 - i0, n, k, a_row(i0), b, beta, c + i0 * ldc, ldc)
                              : one(m, i1 - i0, k, a, b_col(i0), beta, c + i0, ldc);
    if (!done) ok = false;
  });
  return ok.load();
}

}  // namespace

bool gemm_parallel(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc) {
  return gemm_parallel_impl(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_parallel(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                   double* c, int64_t ldc) {
  return gemm_parallel_impl(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool has_blas_gemm() { return blas().sgemm != nullptr && blas().dgemm != nullptr; }

bool blas_calls_nest() { return blas().calls_nest; }

bool has_onednn_gemm() { return blas().onednn_sgemm != nullptr; }

void set_onednn_gemm(bool on) { g_onednn = on; }

int64_t padded_stride(int64_t d, int64_t elem_bytes) {
  if (!g_padded_rows.load(std::memory_order_relaxed) || elem_bytes <= 0) return d;
  const int64_t bytes = d * elem_bytes;
  return bytes >= 512 && bytes % 512 == 0 && 64 % elem_bytes == 0 ? d + 64 / elem_bytes : d;
}

void set_padded_rows(bool on) { g_padded_rows = on; }
bool padded_rows_enabled() { return g_padded_rows.load(); }

bool onednn_gemm_active() {
  return g_onednn.load(std::memory_order_relaxed) && blas().onednn_sgemm != nullptr &&
         blas().sgemm != nullptr;
}

int64_t blas_chunks(int64_t blocks) {
  const int64_t threads = blas_calls_nest() ? at::get_num_threads() : 1;
  return std::max<int64_t>(1, std::min<int64_t>(threads, blocks));
}

bool gemm_rowmajor(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  return gemm_rowmajor(false, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_rowmajor(int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                   const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  return call(blas().dgemm, false, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc) {
  // k = 0 (C = beta C) and empty results stay with the reference BLAS; oneDNN refuses leading
  // dimensions below the operands' widths (a status, not a crash), and the BLAS then takes them.
  if (k > 0 && m > 0 && n > 0 && onednn_gemm_active() && prefer_onednn(trans_a, n, k, lda) &&
      blas().onednn_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb,
                          beta, c, ldc) == 0)
    return true;
  return call(blas().sgemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                   double* c, int64_t ldc) {
  return call(blas().dgemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace recsys::util
