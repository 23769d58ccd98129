#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include "framework/util/blas.h"

// Shared pieces of the hand-written CPU kernels (the blockwise tower MLP, softmax and DIEN
// auxiliary-loss kernels) and their autograd functions.
namespace recsys::util {

/// Why a kernel built on direct BLAS calls cannot take `dtype` ("" when it can): a BLAS sgemm_ /
/// dgemm_ in the process, float32 or float64 operands. Each kernel's own shape checks follow.
inline std::string blas_kernel_unsupported(c10::ScalarType dtype) {
  if (!has_blas_gemm()) return "no BLAS sgemm_/dgemm_ in the process";
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64)
    return "float32 or float64 inputs, got " + std::string(c10::toString(dtype));
  return "";
}

/// The kernels whose backward works on plain numbers (gradients computed in the forward, or
/// loops over raw pointers) cannot be differentiated again: a backward run with create_graph
/// (grad mode on) is refused, naming the op and the composed path that supports it.
inline void refuse_double_backward(const char* op, const char* composed_path) {
  TORCH_CHECK(!torch::GradMode::is_enabled(), op,
              ": double backward (create_graph) is not supported; use ", composed_path);
}

/// A kernel's scratch buffer of n elements, left uninitialised: a std::vector<S>(n) would
/// zero-fill it on every call (a few megabytes per training step across the kernels). For
/// buffers whose every element is written before it is read.
template <typename S>
std::unique_ptr<S[]> scratch_buffer(int64_t n) {
  return std::unique_ptr<S[]>(new S[static_cast<size_t>(n)]);
}

}  // namespace recsys::util
