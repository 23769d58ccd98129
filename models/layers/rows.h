#pragma once
#include <torch/torch.h>

#include <vector>

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

/// Weighted bags of rows: out[b] = sum_l weights[b, l] * table[ids[b, l]], out [B, H] for table
/// [R, H], ids [B, L] int64 in [0, R), weights [B, L] of table's dtype (constants: no gradient;
/// 0 skips an entry, e.g. padding). Backward scatter-adds weights[b, l] * grad[b] into a zero
/// [R, H] table gradient. On the CPU in float32 / float64 a fused loop (no [B, L, H]
/// intermediate), split across threads by rows forward and by entries backward (grouped by row
/// first); elsewhere embedding * weights summed over L, also its oracle.
torch::Tensor bag_rows(const torch::Tensor& table, const torch::Tensor& ids,
                       const torch::Tensor& weights);

/// out = base + sum_f bag_rows(tables[f], ids[f], weights[f]) as one pass over the output (no
/// zeroed [B, H] per bag and no sum of them): base [B, H], or [H] added to every row (a bias);
/// tables[f] [R_f, H], ids[f] and weights[f] [B, L_f] as for bag_rows. Differentiable in base
/// and the tables. On the CPU in float32 / float64 one fused loop; elsewhere the composed sum,
/// also its oracle.
torch::Tensor add_bag_rows(const torch::Tensor& base, const std::vector<torch::Tensor>& tables,
                           const std::vector<torch::Tensor>& ids,
                           const std::vector<torch::Tensor>& weights);

/// Pooled bags of table rows with a sparse table gradient, one fused CPU op (float32 / float64):
/// out[b] = the sum of table[ids[b, l]] over l, divided by the number of non-padding entries
/// (ids != 0, at least 1) for `mean`: torch::embedding + pooling, whose padding row is zero in
/// every table FeatureEncoder makes. ids [B, L] (or [B]) int64 in [0, R).
/// Backward gives a sparse COO gradient with one entry per distinct non-padding id of the batch
/// (indices ascending, values summed) instead of one per looked-up entry: what
/// torch::embedding(padding_idx = 0, sparse) + pooling gives after coalescing (its oracle,
/// pooled_lookup with fused = false), without the [B, L, D] gathered rows.
torch::Tensor pooled_rows_sparse(const torch::Tensor& table, const torch::Tensor& ids, bool mean);

/// table[rows] with a sparse table gradient, for rows strictly increasing int64 in [0, R): table
/// [R, D], out [N, D]. On the CPU with a contiguous float32 / float64 table (rows checked), the
/// backward gives a sparse COO gradient with one entry per row except padding row 0, the
/// incoming gradient rows as values, in row order: what torch::embedding(table, rows,
/// padding_idx = 0, sparse = true) gives after coalescing, without embedding_sparse_backward's
/// tensor operations. Elsewhere it is that torch::embedding call, also its oracle.
torch::Tensor sorted_rows_sparse(const torch::Tensor& table, const torch::Tensor& rows);

}  // namespace recsys::models
