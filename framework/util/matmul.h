#pragma once
#include <torch/torch.h>

// Tensor-level matrix products through util::gemm_parallel (framework/util/blas.h): CPU float32 /
// float64 operands with a unit stride in either dimension (transposed views included) go to the
// BLAS once per thread; anything else, or with the switch off, or where autograd would have to
// record the product, goes to ATen (the oracle of the tests).
namespace recsys::util {

/// a [m, k] @ b [k, n] -> a new contiguous [m, n].
torch::Tensor mm(const torch::Tensor& a, const torch::Tensor& b);

/// bias [n] (broadcast over rows) + a [m, k] @ b [k, n] -> a new contiguous [m, n].
torch::Tensor addmm(const torch::Tensor& bias, const torch::Tensor& a, const torch::Tensor& b);

/// Process-wide switch (default on): off sends mm / addmm to ATen. For A/B measurements
/// (`recsys bench --disable gemm`) and tests.
void set_parallel_gemm(bool on);
bool parallel_gemm_enabled();

}  // namespace recsys::util
