#include "models/layers/rows.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "framework/util/id_groups.h"
#include "framework/util/share.h"
#include "framework/util/simd.h"

namespace recsys::models {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool fast_path(const Tensor& t) {
  return t.device().is_cpu() &&
         (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble);
}

void check_index(const char* who, const Tensor& index, int64_t n, int64_t rows) {
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == torch::kLong && index.size(0) == n, who,
              ": index must be a 1-D int64 tensor of ", n, " entries, got ", index.scalar_type(),
              " ", index.sizes());
  if (n == 0 || !index.device().is_cpu()) return;
  const int64_t* ix = index.data_ptr<int64_t>();
  // A branch-free reduction (vectorised), where std::minmax_element compares entry by entry.
  int64_t lo = ix[0], hi = ix[0];
  for (int64_t k = 1; k < n; ++k) {
    lo = std::min(lo, ix[k]);
    hi = std::max(hi, ix[k]);
  }
  TORCH_CHECK(lo >= 0 && hi < rows, who, ": index entries must lie in [0, ", rows, "), got ", lo,
              " .. ", hi);
}

RECSYS_CLONES void add_row_f32(const float* __restrict src, float* __restrict dst, int64_t d) {
  for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
}
inline void add_row(const float* src, float* dst, int64_t d) { add_row_f32(src, dst, d); }
inline void add_row(const double* src, double* dst, int64_t d) {
  for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
}

RECSYS_CLONES void axpy_row_f32(float a, const float* __restrict src, float* __restrict dst,
                                int64_t d) {
  for (int64_t c = 0; c < d; ++c) dst[c] += a * src[c];
}
inline void axpy_row(float a, const float* src, float* dst, int64_t d) { axpy_row_f32(a, src, dst, d); }
inline void axpy_row(double a, const double* src, double* dst, int64_t d) {
  for (int64_t c = 0; c < d; ++c) dst[c] += a * src[c];
}

// Entries a pooled lookup prefetches ahead.
constexpr int64_t kPrefetchAhead = 8;

// Grain of the bag kernels' thread split, in multiply-adds.
constexpr int64_t kBagGrain = 1 << 16;

// out[g] ([G, H] row-major) = sum over the entries e in [start[g], start[g + 1]) of
// weight(e) * row(e) (entry(e) gives both), in e order; zero for a group without entries.
// The threads split the entries, not the groups: under Zipf ids (and the SSL views' shared
// default bags) a few groups hold a large share of all entries, and a split by groups left one
// thread with most of the work. A group cut by a part boundary is summed piecewise: its first
// piece into out, each later piece into its part's side row, added in part order afterwards (the
// same result for the same thread count).
template <typename S, typename Entry>
void grouped_sums(int64_t G, const int64_t* start, int64_t H, S* out, const Entry& entry) {
  const int64_t total = start[G];
  // At most one part per entry: every part holds at least one entry.
  // Inside a side-by-side part, the parts it would have on its group's threads, which a helper
  // may take (util::shared_for).
  const int64_t threads = at::in_parallel_region() ? std::max<int64_t>(1, util::shared_threads())
                                                   : static_cast<int64_t>(at::get_num_threads());
  const int64_t T = std::max<int64_t>(1, std::min({threads, total * H / kBagGrain, total}));
  std::vector<S> side(static_cast<size_t>(T * H));
  std::vector<int64_t> side_group(static_cast<size_t>(T), -1);
  auto sum_range = [&](int64_t a, int64_t b, S* dst) {
    auto [w, src] = entry(a);
    for (int64_t c = 0; c < H; ++c) dst[c] = w * src[c];
    for (int64_t e = a + 1; e < b; ++e) {
      auto [we, se] = entry(e);
      axpy_row(we, se, dst, H);
    }
  };
  auto part = [&](int64_t t) {
    const int64_t e0 = t * total / T, e1 = (t + 1) * total / T;
    // The first group starting at or after e0; the one before it, if it still has entries at
    // e0, began in an earlier part.
    int64_t g = std::lower_bound(start, start + G + 1, e0) - start;
    if (g > 0 && start[g] > e0 && e0 < e1) {
      side_group[static_cast<size_t>(t)] = g - 1;
      sum_range(e0, std::min(start[g], e1), side.data() + t * H);
    }
    // Groups starting in [e0, e1) (the last part also takes the empty groups at the end).
    for (; g < G && (start[g] < e1 || (t == T - 1 && start[g] <= e1)); ++g) {
      S* dst = out + g * H;
      const int64_t a = start[g], b = std::min(start[g + 1], e1);
      if (a == b)
        std::fill(dst, dst + H, S(0));
      else
        sum_range(a, b, dst);
    }
  };
  util::for_each_chunk(T, part);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t sg = side_group[static_cast<size_t>(t)];
    if (sg >= 0) add_row(side.data() + t * H, out + sg * H, H);
  }
}

// The entries (b, l) of ids [B, L] with a nonzero weight grouped by table row by a counting
// sort: row r's entries, in entry order, at order[start[r] .. start[r + 1]).
struct BagGroups {
  std::vector<int64_t> start, order;
};

template <typename S>
BagGroups bag_groups(const Tensor& ids, const Tensor& weights, int64_t rows) {
  const int64_t n = ids.numel();
  const int64_t* ix = ids.data_ptr<int64_t>();
  const S* w = weights.data_ptr<S>();
  BagGroups gr;
  gr.start.assign(static_cast<size_t>(rows) + 1, 0);
  for (int64_t k = 0; k < n; ++k)
    if (w[k] != 0) ++gr.start[ix[k] + 1];
  for (int64_t r = 0; r < rows; ++r) gr.start[r + 1] += gr.start[r];
  gr.order.resize(static_cast<size_t>(gr.start[rows]));
  std::vector<int64_t> fill(gr.start.begin(), gr.start.end() - 1);
  for (int64_t k = 0; k < n; ++k)
    if (w[k] != 0) gr.order[fill[ix[k]]++] = k;
  return gr;
}

// The table gradients of bags over several tables that share the rows' gradient grad [B, H]:
// table f's gradient [R_f, H] has row r = sum over the entries (b, l) with ids_f[b, l] = r and
// w_f[b, l] != 0 of w_f[b, l] * grad[b] (zero for rows no entry holds). The tables' counting
// sorts run one table per thread; then each table's sums (grouped_sums) split across the
// threads: in entry order within each thread's part, so the last bits of a row cut by a part
// boundary depend on the thread count (the same for the same count).
std::vector<Tensor> bag_backward_kernels(const Tensor& grad_in, const std::vector<Tensor>& ids,
                                         const std::vector<Tensor>& weights,
                                         const std::vector<int64_t>& rows) {
  auto grad = grad_in.contiguous();
  const int64_t H = grad.size(1);
  std::vector<Tensor> out(ids.size());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "bag_rows_backward", [&] {
    std::vector<BagGroups> groups(ids.size());
    util::parallel_for_shared(0, static_cast<int64_t>(ids.size()), 1, [&](int64_t f0, int64_t f1) {
      for (int64_t f = f0; f < f1; ++f) {
        const auto i = static_cast<size_t>(f);
        groups[i] = bag_groups<scalar_t>(ids[i], weights[i], rows[i]);
      }
    });
    const scalar_t* g = grad.data_ptr<scalar_t>();
    for (size_t f = 0; f < ids.size(); ++f) {
      out[f] = torch::empty({rows[f], H}, grad.options());
      if (rows[f] == 0 || H == 0) continue;
      const int64_t L = ids[f].size(1);
      const scalar_t* w = weights[f].data_ptr<scalar_t>();
      const auto& gr = groups[f];
      grouped_sums<scalar_t>(rows[f], gr.start.data(), H, out[f].data_ptr<scalar_t>(), [&](int64_t e) {
        const int64_t k = gr.order[static_cast<size_t>(e)];
        return std::make_pair(w[k], g + (k / L) * H);
      });
    }
  });
  return out;
}

// out [rows, d] = 0, then out[index[k]] += src[k] for every k (in order).
Tensor scatter_add_kernel(const Tensor& src_in, const Tensor& index, int64_t rows) {
  auto src = src_in.contiguous();
  const int64_t n = index.size(0), d = n > 0 ? src.numel() / n : 0;
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  shape[0] = rows;
  auto out = torch::zeros(shape, src.options());
  if (n == 0 || d == 0) return out;
  const int64_t* ix = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "scatter_add_rows", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t k = 0; k < n; ++k) add_row(s + k * d, o + ix[k] * d, d);
  });
  return out;
}

// out [n, d] = src[index[k]].
Tensor gather_kernel(const Tensor& src_in, const Tensor& index) {
  auto src = src_in.contiguous();
  const int64_t n = index.size(0), rows = src.size(0), d = rows > 0 ? src.numel() / rows : 0;
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  shape[0] = n;
  auto out = torch::empty(shape, src.options());
  if (n == 0 || d == 0) return out;
  const int64_t* ix = index.data_ptr<int64_t>();
  const size_t bytes = static_cast<size_t>(d) * src.element_size();
  const char* s = static_cast<const char*>(src.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  for (int64_t k = 0; k < n; ++k) std::memcpy(o + k * bytes, s + ix[k] * bytes, bytes);
  return out;
}

// src[index] whose backward scatter-adds into a zero [R, ...] gradient; or, with `sorted_sparse`
// (index strictly increasing), gives the sparse gradient of table[rows]: one entry per row but
// padding row 0 (which, if present, is index[0]), the incoming rows as values, in row order.
class GatherRows : public torch::autograd::Function<GatherRows> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& src, const Tensor& index,
                        bool sorted_sparse) {
    ctx->save_for_backward({index});
    ctx->saved_data["rows"] = src.size(0);
    ctx->saved_data["sorted_sparse"] = sorted_sparse;
    return gather_kernel(src, index);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto index = ctx->get_saved_variables()[0];
    const int64_t R = ctx->saved_data["rows"].toInt();
    if (!ctx->saved_data["sorted_sparse"].toBool())
      return {scatter_add_kernel(grads[0], index, R), Tensor(), Tensor()};
    const int64_t n = index.size(0);
    auto grad = grads[0].contiguous();
    const int64_t skip = n > 0 && index.data_ptr<int64_t>()[0] == 0 ? 1 : 0;
    auto indices = index.narrow(0, skip, n - skip).clone().view({1, n - skip});
    auto values = grad.narrow(0, skip, n - skip);
    std::vector<int64_t> shape{R};
    shape.insert(shape.end(), grad.sizes().begin() + 1, grad.sizes().end());
    return {at::_sparse_coo_tensor_unsafe(indices, values, shape), Tensor(), Tensor()};
  }
};

class ScatterAddRows : public torch::autograd::Function<ScatterAddRows> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& src, const Tensor& index,
                        int64_t rows) {
    ctx->save_for_backward({index});
    return scatter_add_kernel(src, index, rows);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto index = ctx->get_saved_variables()[0];
    return {gather_kernel(grads[0], index), Tensor(), Tensor()};
  }
};

// out[b] = base[b] (or base, a row) + sum_f sum_l w_f[b, l] * table_f[ids_f[b, l]].
Tensor add_bags_forward_kernel(const Tensor& base_in, const std::vector<Tensor>& tables,
                               const std::vector<Tensor>& ids, const std::vector<Tensor>& weights,
                               int64_t B) {
  auto base = base_in.contiguous();
  const bool per_row = base.dim() == 2;
  const int64_t H = base.size(-1);
  auto out = torch::empty({B, H}, base.options());
  if (B == 0 || H == 0) return out;
  int64_t work = H;
  for (const auto& i : ids) work += i.size(1) * H;
  AT_DISPATCH_FLOATING_TYPES(base.scalar_type(), "add_bag_rows", [&] {
    const scalar_t* bp = base.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    std::vector<const scalar_t*> t, w;
    std::vector<const int64_t*> ix;
    for (size_t f = 0; f < tables.size(); ++f) {
      t.push_back(tables[f].data_ptr<scalar_t>());
      w.push_back(weights[f].data_ptr<scalar_t>());
      ix.push_back(ids[f].data_ptr<int64_t>());
    }
    util::parallel_for_shared(0, B, std::max<int64_t>(1, kBagGrain / work), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* row = o + b * H;
        std::copy(bp + (per_row ? b * H : 0), bp + (per_row ? b * H : 0) + H, row);
        for (size_t f = 0; f < t.size(); ++f) {
          const int64_t L = ids[f].size(1);
          for (int64_t l = 0; l < L; ++l) {
            const scalar_t a = w[f][b * L + l];
            if (a != 0) axpy_row(a, t[f] + ix[f][b * L + l] * H, row, H);
          }
        }
      }
    });
  });
  return out;
}

// out [B, D] = w[b] * sum over non-padding l of table[ids[b, l]], w[b] = 1 / count (mean) or 1.
Tensor pooled_forward_kernel(const Tensor& table, const Tensor& ids, bool mean, Tensor& w_out) {
  const int64_t B = ids.size(0), L = ids.size(1), D = table.size(1);
  auto out = torch::empty({B, D}, table.options());
  w_out = torch::empty({B}, table.options());
  const int64_t* ix = ids.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "pooled_rows_sparse", [&] {
    const scalar_t* t = table.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* w = w_out.data_ptr<scalar_t>();
    const int64_t n = B * L, row_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
    util::parallel_for_shared(0, B, std::max<int64_t>(1, kBagGrain / std::max<int64_t>(1, L * D)),
                     [&](int64_t b0, int64_t b1) {
                       for (int64_t b = b0; b < b1; ++b) {
                         int64_t count = 0;
                         scalar_t* dst = o + b * D;
                         for (int64_t l = 0; l < L; ++l) {
                           const int64_t id = ix[b * L + l];
                           // Rows of a large table are random reads from memory: ask for the
                           // row a few entries ahead while this one is added.
                           if (b * L + l + kPrefetchAhead < n) {
                             const char* ahead = reinterpret_cast<const char*>(
                                 t + ix[b * L + l + kPrefetchAhead] * D);
                             for (int64_t byte = 0; byte < row_bytes; byte += 64)
                               __builtin_prefetch(ahead + byte);
                           }
                           count += id != 0;
                           // Padding entries add the padding row too (zero in every table the
                           // encoder makes, but the oracle adds it): the first row copied, the
                           // others added, no zeroing pass.
                           if (l == 0)
                             std::copy(t + id * D, t + id * D + D, dst);
                           else
                             add_row(t + id * D, dst, D);
                         }
                         if (L == 0) std::fill(dst, dst + D, scalar_t(0));
                         const scalar_t a = mean && count > 1 ? scalar_t(1) / static_cast<scalar_t>(count) : scalar_t(1);
                         if (a != scalar_t(1))
                           for (int64_t c = 0; c < D; ++c) o[b * D + c] *= a;
                         w[b] = a;
                       }
                     });
  });
  return out;
}

// The sparse gradient of pooled_forward_kernel: one value row per distinct non-padding id,
// ascending, value[u] = sum over the entries (b, l) holding it of w[b] * grad[b] (grouped_sums:
// in entry order within each thread's part).
Tensor pooled_backward_kernel(const Tensor& grad_in, const Tensor& ids, const Tensor& w,
                              int64_t rows) {
  auto grad = grad_in.contiguous();
  const int64_t L = ids.size(1), D = grad.size(1), n = ids.size(0) * L;
  const int64_t* ix = ids.data_ptr<int64_t>();
  // Grouped by a radix sort of the ids, each entry carrying its bag.
  util::IdGroups groups;
  int64_t bad = 0;
  TORCH_CHECK(util::group_ids_sorted(ix, n, /*skip=*/0, rows, /*per=*/L, groups, bad),
              "pooled_rows_sparse: id ", bad, " outside [0, ", rows, ")");
  const auto& start = groups.start;
  const auto& order = groups.order;  // the entries' bags
  const auto U = static_cast<int64_t>(groups.rows.size());
  auto values = torch::empty({U, D}, grad.options());  // every row has at least one entry
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "pooled_rows_sparse_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* v = values.data_ptr<scalar_t>();
    grouped_sums<scalar_t>(U, start.data(), D, v, [&](int64_t e) {
      const int64_t b = order[static_cast<size_t>(e)];
      return std::make_pair(wp[b], g + b * D);
    });
  });
  auto indices = torch::tensor(groups.rows, ids.options()).view({1, U});
  return at::_sparse_coo_tensor_unsafe(indices, values, {rows, D});
}

class BagRows : public torch::autograd::Function<BagRows> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& table, const Tensor& ids,
                        const Tensor& weights) {
    ctx->save_for_backward({ids, weights});
    ctx->saved_data["rows"] = table.size(0);
    // The bags added to a zero row: add_bag_rows' kernel with nothing to start from.
    return add_bags_forward_kernel(torch::zeros({table.size(1)}, table.options()),
                                   {table.contiguous()}, {ids}, {weights}, ids.size(0));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {bag_backward_kernels(grads[0], {saved[0]}, {saved[1]}, {ctx->saved_data["rows"].toInt()})[0],
            Tensor(), Tensor()};
  }
};

class PooledRowsSparse : public torch::autograd::Function<PooledRowsSparse> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& table, const Tensor& ids, bool mean) {
    Tensor w;
    auto out = pooled_forward_kernel(table, ids, mean, w);
    ctx->save_for_backward({ids, w});
    ctx->saved_data["rows"] = table.size(0);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {pooled_backward_kernel(grads[0], saved[0], saved[1], ctx->saved_data["rows"].toInt()),
            Tensor(), Tensor()};
  }
};

class AddBagRows : public torch::autograd::Function<AddBagRows> {
 public:
  // Inputs: base, then each table, each ids, each weights (TensorLists: every element is an
  // input of the node).
  static variable_list forward(AutogradContext* ctx, const Tensor& base, at::TensorList tables,
                               at::TensorList ids, at::TensorList weights, int64_t rows) {
    std::vector<Tensor> t, i, w;
    for (const auto& x : tables) t.push_back(x.contiguous());
    for (const auto& x : ids) i.push_back(x.contiguous());
    for (const auto& x : weights) w.push_back(x.detach().contiguous());
    std::vector<Tensor> saved = i;
    saved.insert(saved.end(), w.begin(), w.end());
    ctx->save_for_backward(saved);
    std::vector<int64_t> table_rows;
    for (const auto& x : t) table_rows.push_back(x.size(0));
    ctx->saved_data["table_rows"] = table_rows;
    ctx->saved_data["base_dim"] = base.dim();
    return {add_bags_forward_kernel(base, t, i, w, rows)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto table_rows = ctx->saved_data["table_rows"].toIntVector();
    const size_t n = table_rows.size();
    const auto& g = grads[0];
    variable_list out;
    out.push_back(ctx->saved_data["base_dim"].toInt() == 2 ? g : g.sum(0));
    const std::vector<Tensor> ids(saved.begin(), saved.begin() + static_cast<long>(n)),
        weights(saved.begin() + static_cast<long>(n), saved.begin() + static_cast<long>(2 * n));
    for (auto& t : bag_backward_kernels(g, ids, weights, table_rows)) out.push_back(t);
    for (size_t f = 0; f < 2 * n + 1; ++f) out.emplace_back();  // ids, weights, rows
    return out;
  }
};

}  // namespace

torch::Tensor add_bag_rows(const torch::Tensor& base, const std::vector<torch::Tensor>& tables,
                           const std::vector<torch::Tensor>& ids,
                           const std::vector<torch::Tensor>& weights) {
  TORCH_CHECK(tables.size() == ids.size() && ids.size() == weights.size(),
              "add_bag_rows: one ids and one weights tensor per table");
  TORCH_CHECK(base.dim() == 1 || base.dim() == 2, "add_bag_rows: base must be [B, H] or [H], got ",
              base.sizes());
  const int64_t H = base.size(-1);
  int64_t B = base.dim() == 2 ? base.size(0) : -1;
  for (size_t f = 0; f < tables.size(); ++f) {
    TORCH_CHECK(tables[f].dim() == 2 && tables[f].size(1) == H &&
                    tables[f].scalar_type() == base.scalar_type(),
                "add_bag_rows: table ", f, " must be [R, ", H, "] ", base.scalar_type(), ", got ",
                tables[f].scalar_type(), " ", tables[f].sizes());
    TORCH_CHECK(ids[f].dim() == 2 && ids[f].scalar_type() == torch::kLong &&
                    weights[f].sizes() == ids[f].sizes() &&
                    weights[f].scalar_type() == base.scalar_type(),
                "add_bag_rows: ids ", f, " must be [B, L] int64 with weights of its shape in ",
                base.scalar_type());
    if (B < 0) B = ids[f].size(0);
    TORCH_CHECK(ids[f].size(0) == B, "add_bag_rows: bags ", f, " have ", ids[f].size(0),
                " rows, expected ", B);
    check_index("add_bag_rows", ids[f].reshape({-1}), ids[f].numel(), tables[f].size(0));
  }
  TORCH_CHECK(B >= 0, "add_bag_rows: a [H] base needs at least one table to give the rows");
  bool fast = fast_path(base);
  for (size_t f = 0; f < tables.size(); ++f)
    fast = fast && fast_path(tables[f]) && ids[f].device().is_cpu() && weights[f].device().is_cpu();
  if (!fast) {
    auto out = base.dim() == 2 ? base : base.expand({B, H});
    for (size_t f = 0; f < tables.size(); ++f) out = out + bag_rows(tables[f], ids[f], weights[f]);
    return out;
  }
  return AddBagRows::apply(base, at::TensorList(tables), at::TensorList(ids),
                           at::TensorList(weights), B)[0];
}

torch::Tensor pooled_rows_sparse(const torch::Tensor& table, const torch::Tensor& ids_in,
                                 bool mean) {
  TORCH_CHECK(table.dim() == 2 && fast_path(table) && table.is_contiguous(),
              "pooled_rows_sparse: table must be a contiguous CPU float32 / float64 [R, D], got ",
              table.scalar_type(), " ", table.sizes());
  auto ids = ids_in.dim() == 1 ? ids_in.unsqueeze(1) : ids_in;
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == torch::kLong && ids.device().is_cpu(),
              "pooled_rows_sparse: ids must be CPU [B, L] or [B] int64, got ", ids_in.scalar_type(),
              " ", ids_in.sizes());
  TORCH_CHECK(table.size(0) <= std::numeric_limits<int32_t>::max(),
              "pooled_rows_sparse: at most 2^31 - 1 table rows");
  ids = ids.contiguous();
  check_index("pooled_rows_sparse", ids.reshape({-1}), ids.numel(), table.size(0));
  return PooledRowsSparse::apply(table, ids, mean);
}

torch::Tensor sorted_rows_sparse(const torch::Tensor& table, const torch::Tensor& rows) {
  TORCH_CHECK(table.dim() == 2, "sorted_rows_sparse: table must be [R, D], got ", table.sizes());
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == torch::kLong,
              "sorted_rows_sparse: rows must be an [N] int64 tensor, got ", rows.scalar_type(), " ",
              rows.sizes());
  if (!(fast_path(table) && table.is_contiguous() && rows.device().is_cpu()))
    return torch::embedding(table, rows, /*padding_idx=*/0, /*scale_grad_by_freq=*/false, /*sparse=*/true);
  auto r = rows.contiguous();
  const int64_t* ix = r.data_ptr<int64_t>();
  const int64_t n = r.size(0), R = table.size(0);
  for (int64_t k = 0; k < n; ++k)
    TORCH_CHECK(ix[k] >= 0 && ix[k] < R && (k == 0 || ix[k] > ix[k - 1]),
                "sorted_rows_sparse: rows must be strictly increasing in [0, ", R, "), got ", ix[k],
                " at position ", k, k > 0 ? " after " + std::to_string(ix[k - 1]) : std::string());
  return GatherRows::apply(table, r, true);
}

torch::Tensor bag_rows(const torch::Tensor& table, const torch::Tensor& ids,
                       const torch::Tensor& weights) {
  TORCH_CHECK(table.dim() == 2, "bag_rows: table must be [R, H], got ", table.sizes());
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == torch::kLong, "bag_rows: ids must be [B, L] int64, got ",
              ids.scalar_type(), " ", ids.sizes());
  TORCH_CHECK(weights.sizes() == ids.sizes() && weights.scalar_type() == table.scalar_type(),
              "bag_rows: weights must be ", ids.sizes(), " ", table.scalar_type(), ", got ",
              weights.scalar_type(), " ", weights.sizes());
  check_index("bag_rows", ids.reshape({-1}), ids.numel(), table.size(0));
  if (fast_path(table) && ids.device().is_cpu()) {
    auto i = ids.contiguous();
    auto w = weights.detach().contiguous();
    return BagRows::apply(table, i, w);
  }
  return (torch::embedding(table, ids) * weights.detach().unsqueeze(-1)).sum(1);
}

torch::Tensor gather_rows(const torch::Tensor& src, const torch::Tensor& index) {
  TORCH_CHECK(src.dim() >= 1, "gather_rows: src needs at least one dimension");
  check_index("gather_rows", index, index.dim() == 1 ? index.size(0) : -1, src.size(0));
  if (fast_path(src) && index.device().is_cpu()) return GatherRows::apply(src, index, false);
  return src.index_select(0, index);
}

torch::Tensor scatter_add_rows(const torch::Tensor& src, const torch::Tensor& index,
                               int64_t rows) {
  TORCH_CHECK(src.dim() >= 1, "scatter_add_rows: src needs at least one dimension");
  TORCH_CHECK(rows >= 0, "scatter_add_rows: rows must be >= 0, got ", rows);
  check_index("scatter_add_rows", index, src.size(0), rows);
  if (fast_path(src) && index.device().is_cpu()) return ScatterAddRows::apply(src, index, rows);
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  shape[0] = rows;
  return torch::zeros(shape, src.options()).index_add(0, index, src);
}

}  // namespace recsys::models
