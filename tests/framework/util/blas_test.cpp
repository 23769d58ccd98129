// util::gemm_rowmajor (the process's BLAS called directly) against torch::mm.
#include "framework/util/blas.h"

#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <vector>

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

TEST_CASE("gemm_rowmajor with transposed operands equals torch::mm of the transposes",
          "[kernels]") {
  recsys::testing::seed(4);
  const int64_t m = 13, n = 21, k = 9;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta, tb);
      // Stored [k, m] / [n, k] when transposed, inside wider buffers.
      auto a_buf = torch::randn({ta ? k : m, (ta ? m : k) + 3}, torch::kFloat64);
      auto b_buf = torch::randn({tb ? n : k, (tb ? k : n) + 2}, torch::kFloat64);
      auto a = a_buf.narrow(1, 1, ta ? m : k), b = b_buf.narrow(1, 0, tb ? k : n);
      auto opa = ta ? a.t() : a, opb = tb ? b.t() : b;
      auto c = torch::randn({m, n}, torch::kFloat64);
      auto expected = 0.25 * c + -1.5 * torch::mm(opa, opb);
      REQUIRE(recsys::util::gemm_rowmajor(ta, tb, m, n, k, -1.5, a.data_ptr<double>(),
                                          a_buf.size(1), b.data_ptr<double>(), b_buf.size(1),
                                          0.25, c.data_ptr<double>(), n));
      require_close(c, expected, 1e-12, 1e-12);
    }
}

TEST_CASE("gemm_parallel splits rows, columns or the reduction and equals one product",
          "[kernels]") {
  recsys::testing::seed(6);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  // Shapes for each split: many rows, few rows and many columns, a long reduction into a
  // small result (split-K, 1024 <= k >= 4 max(m, n)), and one below the threading threshold.
  const std::vector<std::array<int64_t, 3>> shapes{
      {500, 40, 70}, {6, 300, 80}, {30, 20, 5000}, {3, 4, 5}};
  for (const auto& s : shapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (double beta : {0.0, 0.5}) {
          const int64_t m = s[0], n = s[1], k = s[2];
          CAPTURE(m, n, k, ta, tb, beta);
          auto a = torch::randn({ta ? k : m, ta ? m : k}, torch::kFloat64);
          auto b = torch::randn({tb ? n : k, tb ? k : n}, torch::kFloat64);
          auto c = beta == 0 ? torch::full({m, n}, std::nan(""), torch::kFloat64)
                             : torch::randn({m, n}, torch::kFloat64);
          auto expected = torch::mm(ta ? a.t() : a, tb ? b.t() : b) * 2.0 +
                          (beta == 0 ? torch::zeros_like(c) : c * beta);
          REQUIRE(recsys::util::gemm_parallel(ta, tb, m, n, k, 2.0, a.data_ptr<double>(),
                                              a.size(1), b.data_ptr<double>(), b.size(1), beta,
                                              c.data_ptr<double>(), n));
          require_close(c, expected, 1e-11, 1e-11);
        }
  at::set_num_threads(threads);
}

TEST_CASE("float products through oneDNN's sgemm equal the float64 product, as the BLAS's do",
          "[kernels]") {
  // Debian's LibTorch links libdnnl; a LibTorch without it leaves every product to the BLAS.
  if (!recsys::util::has_onednn_gemm()) WARN("oneDNN's sgemm is not in this process");
  recsys::testing::seed(8);
  const int threads = at::get_num_threads();
  // Shapes the oneDNN rule takes and ones it leaves to the BLAS: reductions of 36-256, a
  // transposed A with a row stride of 1024 floats (kept on the BLAS), a long reduction into a
  // wide result (BLAS), a long one into a narrow result (oneDNN), a single row and column.
  const std::vector<std::array<int64_t, 3>> shapes{
      {37, 108, 36}, {128, 256, 128}, {1024, 64, 128}, {64, 300, 1100}, {40, 64, 1500}, {1, 1, 7}};
  for (int t : {1, 2}) {
    at::set_num_threads(t);
    for (bool onednn : {true, false}) {
      recsys::util::set_onednn_gemm(onednn);
      CHECK(recsys::util::onednn_gemm_active() == (onednn && recsys::util::has_onednn_gemm()));
      for (const auto& s : shapes)
        for (bool ta : {false, true})
          for (bool tb : {false, true})
            for (float beta : {0.0f, 0.5f}) {
              const int64_t m = s[0], n = s[1], k = s[2];
              CAPTURE(t, onednn, m, n, k, ta, tb, beta);
              // Stored transposed where flagged, inside buffers one column wider.
              const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
              auto a_buf = torch::randn({ar, ac + 1}), b_buf = torch::randn({br, bc + 1});
              auto a = a_buf.narrow(1, 1, ac), b = b_buf.narrow(1, 0, bc);
              auto c = beta == 0 ? torch::full({m, n}, std::nanf("")) : torch::randn({m, n});
              auto a64 = (ta ? a.t() : a).to(torch::kFloat64), b64 = (tb ? b.t() : b).to(torch::kFloat64);
              auto expected = 2.0 * torch::mm(a64, b64) +
                              (beta == 0 ? torch::zeros({m, n}, torch::kFloat64)
                                         : static_cast<double>(beta) * c.to(torch::kFloat64));
              const bool ok =
                  t == 1 ? recsys::util::gemm_rowmajor(ta, tb, m, n, k, 2.0f, a.data_ptr<float>(),
                                                       ac + 1, b.data_ptr<float>(), bc + 1, beta,
                                                       c.data_ptr<float>(), n)
                         : recsys::util::gemm_parallel(ta, tb, m, n, k, 2.0f, a.data_ptr<float>(),
                                                       ac + 1, b.data_ptr<float>(), bc + 1, beta,
                                                       c.data_ptr<float>(), n);
              REQUIRE(ok);
              // Float rounding of k products of unit normals: about sqrt(k) 2^-24 each.
              const double tol = 2e-6 * std::sqrt(static_cast<double>(k)) * 8;
              require_close(c.to(torch::kFloat64), expected, tol, tol);
            }
    }
  }
  recsys::util::set_onednn_gemm(true);
  at::set_num_threads(threads);
}

TEST_CASE("padded_stride lengthens rows of a multiple of 512 bytes by 64 bytes, when on",
          "[kernels]") {
  using recsys::util::padded_stride;
  CHECK(padded_stride(256, 4) == 272);   // 1 KiB rows of floats
  CHECK(padded_stride(128, 4) == 144);   // 512 bytes
  CHECK(padded_stride(1024, 4) == 1040); // 4 KiB
  CHECK(padded_stride(64, 4) == 64);     // 256 bytes: below 512
  CHECK(padded_stride(200, 4) == 200);   // 800 bytes: not a multiple of 512
  CHECK(padded_stride(64, 8) == 72);     // 512 bytes of doubles
  CHECK(padded_stride(100, 8) == 100);
  recsys::util::set_padded_rows(false);
  CHECK_FALSE(recsys::util::padded_rows_enabled());
  CHECK(padded_stride(256, 4) == 256);
  recsys::util::set_padded_rows(true);
  CHECK(recsys::util::padded_rows_enabled());
}
