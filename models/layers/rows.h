#pragma once
#include <torch/torch.h>

// Row gathers and scatter-adds for packed layouts (DIN's and DIEN's valid steps), as autograd
// functions whose backward is the other one. On the CPU in float32 / float64 they are plain
// loops (ATen's index_add on the CPU runs one small tensor operation per index in LibTorch
// 1.13); other devices and dtypes use index_select / index_add, which are also their oracle.
namespace recsys::models {

/// out[k] = src[index[k]]: src [R, ...] (or [R]), index [N] int64 in [0, R). Backward
/// scatter-adds into a zero [R, ...] gradient (repeated indices accumulate).
torch::Tensor gather_rows(const torch::Tensor& src, const torch::Tensor& index);

/// out[index[k]] += src[k] on a zero [rows, ...] tensor: src [N, ...] (or [N]), index [N] int64
/// in [0, rows). Backward gathers.
torch::Tensor scatter_add_rows(const torch::Tensor& src, const torch::Tensor& index, int64_t rows);

}  // namespace recsys::models
