#include "framework/util/matmul.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <atomic>

#include "framework/util/blas.h"

namespace recsys::util {

namespace {

std::atomic<bool> g_enabled{true};

// A 2-D operand as the BLAS sees it: row-major (trans = false, rows `ld` apart) or the transpose
// of a row-major matrix (trans = true). `data` keeps a contiguous copy alive when one was needed.
struct Operand {
  torch::Tensor data;
  bool trans = false;
  int64_t ld = 1;
};

Operand operand(const torch::Tensor& t) {
  const int64_t r = t.size(0), c = t.size(1);
  if (t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, c)) return {t, false, t.stride(0)};
  if (t.stride(0) == 1 && t.stride(1) >= std::max<int64_t>(1, r)) return {t, true, t.stride(1)};
  auto contiguous = t.contiguous();
  return {contiguous, false, std::max<int64_t>(1, c)};
}

bool usable(const torch::Tensor& a, const torch::Tensor& b) {
  if (!g_enabled.load(std::memory_order_relaxed) || !has_blas_gemm()) return false;
  if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0)) return false;
  if (!a.device().is_cpu() || !b.device().is_cpu() || a.scalar_type() != b.scalar_type())
    return false;
  if (a.scalar_type() != torch::kFloat32 && a.scalar_type() != torch::kFloat64) return false;
  if (torch::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad())) return false;
  return a.numel() > 0 && b.numel() > 0;
}

// out (contiguous [m, n], holding beta's operand) = a @ b + beta out; ATen's product when the
// BLAS refuses the call (sizes beyond its int arguments).
void product(const torch::Tensor& a, const torch::Tensor& b, double beta, torch::Tensor& out) {
  const auto A = operand(a), B = operand(b);
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  bool done = false;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "util::mm", [&] {
    done = gemm_parallel(A.trans, B.trans, m, n, k, scalar_t(1), A.data.data_ptr<scalar_t>(),
                         A.ld, B.data.data_ptr<scalar_t>(), B.ld, static_cast<scalar_t>(beta),
                         out.data_ptr<scalar_t>(), std::max<int64_t>(1, n));
  });
  if (!done) {
    if (beta == 0)
      at::mm_out(out, a, b);
    else
      out.addmm_(a, b);
  }
}

}  // namespace

void set_parallel_gemm(bool on) { g_enabled = on; }
bool parallel_gemm_enabled() { return g_enabled.load(); }

torch::Tensor mm(const torch::Tensor& a, const torch::Tensor& b) {
  if (!usable(a, b)) return at::mm(a, b);
  RECORD_FUNCTION("recsys::mm", std::vector<c10::IValue>());  // named in profiles as aten's
  auto out = torch::empty({a.size(0), b.size(1)}, a.options());
  product(a, b, 0.0, out);
  return out;
}

torch::Tensor addmm(const torch::Tensor& bias, const torch::Tensor& a, const torch::Tensor& b) {
  if (!usable(a, b) || bias.scalar_type() != a.scalar_type() || !bias.device().is_cpu() ||
      (torch::GradMode::is_enabled() && bias.requires_grad()))
    return at::addmm(bias, a, b);
  RECORD_FUNCTION("recsys::addmm", std::vector<c10::IValue>());
  // A copy even when bias is already [m, n] and contiguous (contiguous() would alias it).
  auto out = torch::empty({a.size(0), b.size(1)}, a.options());
  out.copy_(bias.expand({a.size(0), b.size(1)}));
  product(a, b, 1.0, out);
  return out;
}

}  // namespace recsys::util
