#pragma once
#include <cstdint>

// Direct calls to the BLAS matrix product that LibTorch itself calls (sgemm_ / dgemm_, found in
// the process at run time: whichever library LibTorch's own calls bind to, OpenBLAS on Debian).
// For hot loops of many small products (a recurrent step per time step), where ATen's per-call
// work (dispatch, views, conjugation and layout checks) costs as much as the product itself.
namespace recsys::util {

/// Whether a BLAS sgemm_ / dgemm_ was found; when not, gemm_rowmajor does nothing and returns
/// false (callers keep their ATen path).
bool has_blas_gemm();

/// Whether oneDNN's sgemm (LibTorch's own libdnnl, found in the process at run time) is there.
bool has_onednn_gemm();

/// Float products of gemm_rowmajor / gemm_parallel go to oneDNN's sgemm where it is there, on
/// (the default) and faster for the shape (blas.cpp: prefer_onednn); otherwise, and for double,
/// to the BLAS. Off: the BLAS only (the plain path, `recsys bench --disable onednn_gemm`).
void set_onednn_gemm(bool on);
/// Whether float products may go to oneDNN now (switched on and found).
bool onednn_gemm_active();

/// Row stride, in elements of `elem_bytes` bytes, for a row of d values in a buffer a kernel owns
/// and hands to the products: rows of a multiple of 512 bytes get 64 bytes more. With such
/// power-of-two strides the rows of a block map to few cache sets, and the products that read a
/// block down its columns (weight gradients g^T x, or the in-batch softmax's db += g^T a) or
/// take it as B ran 6-21% slower in a micro-benchmark (oneDNN on its own two threads), 2x for
/// 4 KiB rows (docs/performance.md).
/// Process-wide switch (default on): off returns d (`recsys bench --paired padded_rows`).
int64_t padded_stride(int64_t d, int64_t elem_bytes);
void set_padded_rows(bool on);
bool padded_rows_enabled();

/// Whether a BLAS call made inside a parallel region runs on its calling thread (a sequential or
/// OpenMP BLAS; not a pthreads OpenBLAS, whose calls use its own pool). Kernels that give each
/// thread its own BLAS calls run on one thread when it is false.
bool blas_calls_nest();

/// How many chunks a kernel that makes its own BLAS calls on each thread cuts `blocks` blocks
/// into: one per intra-op thread, at most one per block, at least one; a single chunk (one
/// thread) when the BLAS's calls do not run on their calling thread (blas_calls_nest()).
int64_t blas_chunks(int64_t blocks);

/// Row-major C [m, n] = alpha A [m, k] B [k, n] + beta C, with row strides lda, ldb, ldc (in
/// elements; A and B not transposed). Returns false when no BLAS was found. With beta = 0 the
/// initial content of C is ignored (it may be uninitialised).
bool gemm_rowmajor(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
bool gemm_rowmajor(int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                   const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

/// Row-major C [m, n] = alpha op(A) op(B) + beta C, op(X) = X^T when its flag is set: op(A) is
/// [m, k] (A stored [k, m] when transposed), op(B) is [k, n] (B stored [n, k] when transposed);
/// lda, ldb, ldc are the stored matrices' row strides. Returns false when no BLAS was found.
bool gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc);
bool gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                   double* c, int64_t ldc);

/// The same product split across LibTorch's intra-op threads, each thread one single-threaded
/// BLAS call on its share: rows of C (or columns, for C with few rows), or, for a long reduction
/// into a small C (weight gradients: k much larger than m and n), a slice of k with per-thread
/// partial products summed in thread order afterwards. On a 2-core machine this runs the skinny
/// products of the CTR models 1.2-2.6x faster than the BLAS's own threading
/// (docs/performance.md). Inside a parallel region, for small products, or with a BLAS whose
/// calls do not run on their calling thread (a pthreads OpenBLAS), one plain call.
bool gemm_parallel(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc);
bool gemm_parallel(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                   double* c, int64_t ldc);

}  // namespace recsys::util
