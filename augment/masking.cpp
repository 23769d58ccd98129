#include "augment/masking.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

namespace recsys::augment {

torch::Tensor mask_rows(const torch::Tensor& t, const torch::Tensor& mask) {
  if (t.scalar_type() != torch::kInt64) return t;
  if (t.device().is_cpu() && mask.device().is_cpu() && t.dim() == 2 &&
      mask.scalar_type() == torch::kBool && mask.dim() == 1 && mask.size(0) == t.size(0)) {
    // One pass: masked rows become the default bag [1, 0, ...], the others are copied.
    auto out = t.contiguous().clone();
    auto m = mask.contiguous();
    const bool* mp = m.data_ptr<bool>();
    int64_t* o = out.data_ptr<int64_t>();
    const int64_t rows = out.size(0), width = out.size(1);
    for (int64_t r = 0; r < rows; ++r) {
      if (!mp[r] || width == 0) continue;
      std::fill(o + r * width, o + (r + 1) * width, int64_t{0});
      o[r * width] = data::kDefaultIndex;
    }
    return out;
  }
  auto def = torch::zeros({1, t.size(1)}, t.options());
  def[0][0] = data::kDefaultIndex;
  return torch::where(mask.unsqueeze(1), def, t);
}

std::pair<torch::Tensor, torch::Tensor> mask_rows_both(const torch::Tensor& t, const torch::Tensor& mask) {
  if (t.scalar_type() != torch::kInt64) return {t, t};
  if (!(t.device().is_cpu() && mask.device().is_cpu() && t.dim() == 2 &&
        mask.scalar_type() == torch::kBool && mask.dim() == 1 && mask.size(0) == t.size(0)))
    return {mask_rows(t, mask), mask_rows(t, ~mask)};
  auto src = t.contiguous();
  auto a = torch::empty_like(src), b = torch::empty_like(src);
  const int64_t rows = src.size(0), width = src.size(1), stride = mask.stride(0);
  const bool* mp = mask.data_ptr<bool>();
  const int64_t* in = src.data_ptr<int64_t>();
  int64_t *pa = a.data_ptr<int64_t>(), *pb = b.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const bool m = mp[r * stride];
    int64_t* masked = (m ? pa : pb) + r * width;
    int64_t* kept = (m ? pb : pa) + r * width;
    const int64_t* row = in + r * width;
    // Plain loops: the bags are a handful of ids, too short for memcpy / memset calls to pay.
    for (int64_t c = 0; c < width; ++c) {
      kept[c] = row[c];
      masked[c] = c == 0 ? data::kDefaultIndex : 0;
    }
  }
  return {a, b};
}

std::vector<std::vector<double>> mutual_information(const data::FeatureTable& items,
                                                    const std::vector<int64_t>& columns) {
  const size_t F = columns.size();
  const int64_t n = items.num_rows();
  std::vector<std::vector<double>> mi(F, std::vector<double>(F, 0.0));
  // Marginals per feature: value -> mass.
  std::vector<std::unordered_map<int64_t, double>> marg(F);
  for (size_t a = 0; a < F; ++a) {
    if (items.spec(columns[a]).kind == data::FeatureKind::kNumeric) continue;
    for (int64_t r = 0; r < n; ++r) {
      auto [p, len] = items.bag(columns[a], r);
      for (int64_t i = 0; i < len; ++i) marg[a][p[i]] += 1.0 / static_cast<double>(len * n);
    }
    double h = 0;
    for (auto& [v, pv] : marg[a]) h -= pv * std::log(pv);
    mi[a][a] = h;
  }
  for (size_t a = 0; a < F; ++a) {
    for (size_t b = a + 1; b < F; ++b) {
      if (marg[a].empty() || marg[b].empty()) continue;
      std::unordered_map<uint64_t, double> joint;
      joint.reserve(static_cast<size_t>(n) * 2);
      for (int64_t r = 0; r < n; ++r) {
        auto [pa, la] = items.bag(columns[a], r);
        auto [pb, lb] = items.bag(columns[b], r);
        double w = 1.0 / static_cast<double>(la * lb * n);
        for (int64_t i = 0; i < la; ++i)
          for (int64_t j = 0; j < lb; ++j)
            joint[(static_cast<uint64_t>(pa[i]) << 32) ^ static_cast<uint64_t>(pb[j])] += w;
      }
      double m = 0;
      for (auto& [key, pab] : joint) {
        int64_t va = static_cast<int64_t>(key >> 32), vb = static_cast<int64_t>(key & 0xffffffffULL);
        m += pab * std::log(pab / (marg[a][va] * marg[b][vb]));
      }
      mi[a][b] = mi[b][a] = std::max(0.0, m);
    }
  }
  return mi;
}

std::vector<std::vector<int64_t>> correlated_groups(const std::vector<std::vector<double>>& mi,
                                                    int64_t group_size) {
  const int64_t F = static_cast<int64_t>(mi.size());
  group_size = std::clamp<int64_t>(group_size, 1, F);
  std::vector<std::vector<int64_t>> groups(static_cast<size_t>(F));
  for (int64_t f = 0; f < F; ++f) {
    std::vector<int64_t> others;
    for (int64_t g = 0; g < F; ++g)
      if (g != f) others.push_back(g);
    std::stable_sort(others.begin(), others.end(),
                     [&](int64_t x, int64_t y) { return mi[f][x] > mi[f][y]; });
    groups[f].push_back(f);
    for (int64_t i = 0; i < group_size - 1; ++i) groups[f].push_back(others[static_cast<size_t>(i)]);
  }
  return groups;
}

}  // namespace recsys::augment
