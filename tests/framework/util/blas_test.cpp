// util::gemm_rowmajor (the process's BLAS called directly) against torch::mm.
#include "framework/util/blas.h"

#include "support.h"

using recsys::testing::require_close;

TEST_CASE("gemm_rowmajor computes row-major products with row strides, as torch::mm", "[kernels]") {
  REQUIRE(recsys::util::has_blas_gemm());  // LibTorch's own BLAS is in the process
  recsys::testing::seed(3);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    CAPTURE(dtype);
    // Operands inside wider buffers (row strides larger than the widths), C accumulated into.
    const int64_t m = 37, n = 108, k = 36;
    auto a_buf = torch::randn({m, k + 5}, dtype), b_buf = torch::randn({k, n + 3}, dtype);
    auto c_buf = torch::randn({m, n + 7}, dtype);
    auto a = a_buf.narrow(1, 2, k), b = b_buf.narrow(1, 0, n), c = c_buf.narrow(1, 4, n);
    auto expected = 0.5 * c + 2.0 * torch::mm(a, b);
    auto before = c_buf.clone();
    bool ok = dtype == torch::kFloat32
                  ? recsys::util::gemm_rowmajor(m, n, k, 2.0f, a.data_ptr<float>(), k + 5,
                                                b.data_ptr<float>(), n + 3, 0.5f,
                                                c.data_ptr<float>(), n + 7)
                  : recsys::util::gemm_rowmajor(m, n, k, 2.0, a.data_ptr<double>(), k + 5,
                                                b.data_ptr<double>(), n + 3, 0.5,
                                                c.data_ptr<double>(), n + 7);
    REQUIRE(ok);
    const double tol = dtype == torch::kFloat32 ? 1e-4 : 1e-12;
    require_close(c, expected, tol, tol);
    // Columns outside C's window are left alone.
    CHECK(torch::equal(c_buf.narrow(1, 0, 4), before.narrow(1, 0, 4)));
    CHECK(torch::equal(c_buf.narrow(1, 4 + n, 3), before.narrow(1, 4 + n, 3)));
  }
  // beta = 0 ignores C's content (NaN here).
  auto a = torch::randn({3, 4}), b = torch::randn({4, 5});
  auto c = torch::full({3, 5}, std::nanf(""));
  REQUIRE(recsys::util::gemm_rowmajor(3, 5, 4, 1.0f, a.data_ptr<float>(), 4, b.data_ptr<float>(),
                                      5, 0.0f, c.data_ptr<float>(), 5));
  require_close(c, torch::mm(a, b), 1e-5, 1e-5);
}
