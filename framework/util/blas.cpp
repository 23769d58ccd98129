#include "framework/util/blas.h"

#include <dlfcn.h>

#include <climits>

namespace recsys::util {

namespace {

// Fortran BLAS: column-major, arguments by pointer.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const float*, const float*, const int*, const float*, const int*,
                         const float*, float*, const int*);
using DgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*,
                         const double*, const double*, const int*, const double*, const int*,
                         const double*, double*, const int*);

struct Blas {
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  Blas() {
    // RTLD_DEFAULT: the process's global lookup order, the same one that bound LibTorch's calls.
    sgemm = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_"));
    dgemm = reinterpret_cast<DgemmFn>(dlsym(RTLD_DEFAULT, "dgemm_"));
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

}  // namespace

bool has_blas_gemm() { return blas().sgemm != nullptr && blas().dgemm != nullptr; }

bool gemm_rowmajor(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  return call(blas().sgemm, false, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_rowmajor(int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                   const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  return call(blas().dgemm, false, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc) {
  return call(blas().sgemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                   double* c, int64_t ldc) {
  return call(blas().dgemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace recsys::util
