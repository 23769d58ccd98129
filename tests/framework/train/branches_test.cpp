// train::run_staged and combine_gradients against loss.backward() through the uncut graph.
#include "framework/train/branches.h"

#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "framework/util/blas.h"
#include "support.h"

using namespace recsys::train;
using recsys::testing::require_close;
using recsys::testing::ThreadCount;

namespace {

/// A small two-branch model in float64: a shared sparse table (looked up by both branches), a
/// shared dense weight, one weight per branch, and a temperature the loss uses directly.
struct Model {
  torch::Tensor table, shared, w_user, w_item, temperature, unused, frozen;
  std::vector<torch::Tensor> params() const {
    return {table, shared, w_user, w_item, temperature, unused, frozen};
  }
};

Model make_model(uint64_t seed) {
  torch::manual_seed(seed);
  auto o = torch::TensorOptions().dtype(torch::kFloat64);
  Model m;
  m.table = torch::randn({9, 4}, o).requires_grad_(true);
  m.shared = torch::randn({4, 5}, o).requires_grad_(true);
  m.w_user = torch::randn({5, 3}, o).requires_grad_(true);
  m.w_item = torch::randn({5, 3}, o).requires_grad_(true);
  m.temperature = torch::full({}, 0.7, o).requires_grad_(true);
  m.unused = torch::randn({2}, o).requires_grad_(true);
  m.frozen = torch::randn({3}, o);  // no gradient: a fixed shift of the item outputs
  return m;
}

const torch::Tensor& user_ids() {
  static const auto ids = torch::tensor({1, 3, 3, 8, 2}, torch::kInt64);
  return ids;
}
const torch::Tensor& item_ids() {
  static const auto ids = torch::tensor({3, 5, 7, 1, 1}, torch::kInt64);
  return ids;
}

torch::Tensor user_tower(const Model& m) {
  auto x = torch::embedding(m.table, user_ids(), -1, false, /*sparse=*/true);
  return torch::tanh(x.mm(m.shared)).mm(m.w_user);
}
torch::Tensor item_tower(const Model& m) {
  auto x = torch::embedding(m.table, item_ids(), -1, false, /*sparse=*/true);
  return torch::tanh(x.mm(m.shared)).mm(m.w_item) + m.frozen;
}
/// A second output of the user branch: its embeddings' mean, which the loss also uses.
torch::Tensor user_extra(const Model& m) {
  return torch::embedding(m.table, user_ids(), -1, false, /*sparse=*/true).mean(0);
}
/// An in-batch softmax with a learned temperature, plus a term on the item outputs alone.
torch::Tensor loss_of(const Model& m, const torch::Tensor& u, const torch::Tensor& v) {
  auto logits = u.mm(v.t()) / m.temperature;
  auto target = torch::arange(u.size(0), torch::kInt64);
  return torch::nn::functional::cross_entropy(logits, target) + 0.1 * v.pow(2).sum();
}
torch::Tensor loss_of(const Model& m, const torch::Tensor& u, const torch::Tensor& v,
                      const torch::Tensor& extra) {
  return loss_of(m, u, v) + 0.3 * extra.pow(2).sum();
}

/// The threads the branches ran on (stages 1 and 3 each record theirs).
struct Seen {
  std::mutex mu;
  std::set<std::thread::id> threads;
  bool grad_mode = true;
  void note() {
    std::lock_guard<std::mutex> lock(mu);
    threads.insert(std::this_thread::get_id());
    grad_mode = grad_mode && torch::GradMode::is_enabled();
  }
};

torch::Tensor staged(const Model& m, bool side_by_side, Seen* seen = nullptr) {
  return run_staged({[&] {
                       if (seen) seen->note();
                       return std::vector<torch::Tensor>{user_tower(m), user_extra(m)};
                     },
                     [&] {
                       if (seen) seen->note();
                       return std::vector<torch::Tensor>{item_tower(m)};
                     }},
                    [&](const std::vector<std::vector<torch::Tensor>>& out) {
                      return loss_of(m, out[0][0], out[1][0], out[0][1]);
                    },
                    m.params(), side_by_side);
}

torch::Tensor dense(const torch::Tensor& g) { return g.is_sparse() ? g.to_dense() : g; }

}  // namespace

TEST_CASE("combine_gradients sums dense parts and concatenates sparse ones in order", "[train]") {
  auto o = torch::TensorOptions().dtype(torch::kFloat64);
  auto d1 = torch::tensor({1.0, 2.0, 3.0}, o), d2 = torch::tensor({0.5, 0.25, -1.0}, o);
  require_close(combine_gradients({d1, torch::Tensor(), d2}), torch::tensor({1.5, 2.25, 2.0}, o));
  REQUIRE_FALSE(combine_gradients({torch::Tensor(), torch::Tensor()}).defined());
  REQUIRE(combine_gradients({torch::Tensor(), d2}).data_ptr() == d2.data_ptr());

  auto s1 = torch::sparse_coo_tensor(torch::tensor({{2, 0}}, torch::kInt64),
                                     torch::tensor({{1.0, 2.0}, {3.0, 4.0}}, o), {4, 2});
  auto s2 = torch::sparse_coo_tensor(torch::tensor({{2}}, torch::kInt64),
                                     torch::tensor({{10.0, 20.0}}, o), {4, 2});
  auto s = combine_gradients({s1, s2});
  REQUIRE(s.is_sparse());
  // Uncoalesced, the entries of the first part first.
  REQUIRE(s._indices().equal(torch::tensor({{2, 0, 2}}, torch::kInt64)));
  require_close(s._values(), torch::tensor({{1.0, 2.0}, {3.0, 4.0}, {10.0, 20.0}}, o));
  require_close(s.to_dense(), s1.to_dense() + s2.to_dense());

  // Dense and sparse together: densified.
  auto d = torch::ones({4, 2}, o);
  auto mixed = combine_gradients({s1, d, s2});
  REQUIRE_FALSE(mixed.is_sparse());
  require_close(mixed, d + s1.to_dense() + s2.to_dense());

  REQUIRE_THROWS_WITH(combine_gradients({d1, torch::ones({2}, o)}),
                      Catch::Contains("gradients of shapes"));
}

TEST_CASE("combine_gradients merges sparse parts whose rows ascend, summing in part order", "[train]") {
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    auto o = torch::TensorOptions().dtype(dtype);
    auto s1 = torch::_sparse_coo_tensor_unsafe(torch::tensor({{0, 3, 5}}, torch::kInt64),
                                               torch::tensor({{1.0, 2.0}, {3.0, 4.0}, {5.0, 6.0}}, o), {7, 2});
    auto s2 = torch::_sparse_coo_tensor_unsafe(torch::tensor({{3, 6}}, torch::kInt64),
                                               torch::tensor({{0.5, 0.25}, {7.0, 8.0}}, o), {7, 2});
    auto s3 = torch::_sparse_coo_tensor_unsafe(torch::tensor({{0, 3}}, torch::kInt64),
                                               torch::tensor({{-1.0, 1.0}, {0.125, 0.0}}, o), {7, 2});
    auto m = combine_gradients({torch::Tensor(), s1, s2, s3});
    REQUIRE(m.is_sparse());
    REQUIRE(m.is_coalesced());
    REQUIRE(m._indices().equal(torch::tensor({{0, 3, 5, 6}}, torch::kInt64)));
    // Row 3: (3 + 0.5) + 0.125 and (4 + 0.25) + 0, in part order.
    REQUIRE(m._values().equal(torch::tensor({{0.0, 3.0}, {3.625, 4.25}, {5.0, 6.0}, {7.0, 8.0}}, o)));
    REQUIRE(m.to_dense().equal(s1.to_dense() + s2.to_dense() + s3.to_dense()));
  }
  // Random parts: the merge equals the concatenation summed in entry order, bit for bit.
  torch::manual_seed(4);
  std::vector<torch::Tensor> parts;
  for (int k = 0; k < 3; ++k) {
    auto rows = std::get<0>(torch::_unique2(torch::randint(0, 5000, {3000}, torch::kInt64), /*sorted=*/true));
    parts.push_back(torch::_sparse_coo_tensor_unsafe(rows.view({1, -1}), torch::randn({rows.size(0), 16}),
                                                     {5000, 16}));
  }
  auto merged = combine_gradients(parts);
  auto expected = parts[0].to_dense();
  for (int k = 1; k < 3; ++k) expected += parts[k].to_dense();
  REQUIRE(merged.is_coalesced());
  REQUIRE(merged.to_dense().equal(expected));
  // A part whose rows do not ascend: concatenated, as before.
  auto unsorted = torch::_sparse_coo_tensor_unsafe(torch::tensor({{4, 1}}, torch::kInt64), torch::ones({2, 16}),
                                                   {5000, 16});
  auto cat = combine_gradients({parts[0], unsorted});
  REQUIRE(cat._nnz() == parts[0]._nnz() + 2);
}

TEST_CASE("run_staged gives the gradients of the uncut graph, side by side or not", "[train]") {
  ThreadCount threads(2);
  auto ref = make_model(5);
  auto ref_loss = loss_of(ref, user_tower(ref), item_tower(ref), user_extra(ref));
  ref_loss.backward();
  for (bool side : {true, false}) {
    INFO("side by side " << side);
    auto m = make_model(5);
    Seen seen;
    auto loss = staged(m, side, &seen);
    REQUIRE(seen.grad_mode);
    // Side by side, the two branches ran on two threads (with 2 intra-op threads).
    REQUIRE(seen.threads.size() == (side ? 2u : 1u));
    REQUIRE_FALSE(loss.requires_grad());
    require_close(loss, ref_loss, 1e-12, 1e-12);
    const auto p = m.params(), q = ref.params();
    for (size_t i = 0; i + 2 < p.size(); ++i) {
      INFO("parameter " << i);
      REQUIRE(p[i].grad().defined());
      REQUIRE(p[i].grad().is_sparse() == q[i].grad().is_sparse());
      require_close(dense(p[i].grad()), dense(q[i].grad()), 1e-12, 1e-12);
    }
    // A parameter no stage uses keeps no gradient; one without requires_grad gets none.
    REQUIRE_FALSE(m.unused.grad().defined());
    REQUIRE_FALSE(m.frozen.grad().defined());
    // The table's sparse entries: the loss's (none), the user branch's (both outputs, summed by
    // autograd inside the branch), then the item branch's.
    auto rows = m.table.grad()._indices().view({-1});
    REQUIRE(rows.narrow(0, rows.size(0) - item_ids().size(0), item_ids().size(0)).equal(item_ids()));
  }
}

TEST_CASE("run_staged is deterministic and adds to the gradients already held", "[train]") {
  ThreadCount threads(2);
  auto a = make_model(9), b = make_model(9);
  for (int i = 0; i < 5; ++i) staged(a, true);
  for (int i = 0; i < 5; ++i) staged(b, true);
  for (size_t i = 0; i + 2 < a.params().size(); ++i)
    REQUIRE(dense(a.params()[i].grad()).equal(dense(b.params()[i].grad())));
  // Five accumulated steps: five times one step's gradient.
  auto c = make_model(9);
  staged(c, false);
  require_close(dense(a.shared.grad()), 5 * dense(c.shared.grad()), 1e-12, 1e-12);
  require_close(dense(a.table.grad()), 5 * dense(c.table.grad()), 1e-12, 1e-12);
}

TEST_CASE("run_staged rethrows a branch's error with no gradient changed", "[train]") {
  ThreadCount threads(2);
  for (bool side : {true, false}) {
    auto m = make_model(3);
    REQUIRE_THROWS_WITH(
        run_staged({[&] { return std::vector<torch::Tensor>{user_tower(m)}; },
                    [&]() -> std::vector<torch::Tensor> { throw std::runtime_error("bad item batch"); }},
                   [&](const std::vector<std::vector<torch::Tensor>>& out) {
                     return out[0][0].sum();
                   },
                   m.params(), side),
        Catch::Contains("bad item batch"));
    for (const auto& p : m.params()) REQUIRE_FALSE(p.grad().defined());
    REQUIRE_THROWS_WITH(
        run_staged({[&] { return std::vector<torch::Tensor>{user_tower(m)}; }},
                   [&](const std::vector<std::vector<torch::Tensor>>& out) { return out[0][0]; },
                   m.params(), side),
        Catch::Contains("the loss must be a scalar"));
    for (const auto& p : m.params()) REQUIRE_FALSE(p.grad().defined());
  }
}

TEST_CASE("run_staged gives a parameter listed twice its gradient once", "[train]") {
  ThreadCount threads(2);
  auto m = make_model(4), ref = make_model(4);
  auto params = m.params();
  params.push_back(m.shared);
  run_staged({[&] { return std::vector<torch::Tensor>{user_tower(m)}; },
              [&] { return std::vector<torch::Tensor>{item_tower(m)}; }},
             [&](const std::vector<std::vector<torch::Tensor>>& out) {
               return loss_of(m, out[0][0], out[1][0]);
             },
             params, true);
  loss_of(ref, user_tower(ref), item_tower(ref)).backward();
  require_close(m.shared.grad(), ref.shared.grad(), 1e-12, 1e-12);
}

TEST_CASE("side_by_side_at needs 2 threads and no more threads than branches", "[train]") {
  ThreadCount threads(1);
  REQUIRE_FALSE(side_by_side_at(2));
  threads.set(2);
  // Only where the BLAS runs each call on its calling thread (else never side by side).
  REQUIRE(side_by_side_at(2) == recsys::util::blas_calls_nest());
  REQUIRE_FALSE(side_by_side_at(1));
  threads.set(3);
  REQUIRE_FALSE(side_by_side_at(2));
  REQUIRE(side_by_side_at(3) == recsys::util::blas_calls_nest());
}
