// Retrieval losses against float64 hand computations.
#include "losses/retrieval.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "support.h"

using namespace recsys::losses;
using recsys::testing::require_close;
using Mat = std::vector<std::vector<double>>;

namespace {

torch::Tensor to_tensor(const Mat& m) {
  auto t = torch::empty({static_cast<int64_t>(m.size()), static_cast<int64_t>(m[0].size())},
                        torch::kFloat32);
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[0].size(); ++j) t[i][j] = m[i][j];
  return t;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

/// loss_i = -log softmax_j(<u_i, c_j> / tau - log_q_j)[i] over the columns j not in `masked[i]`.
std::vector<double> softmax_by_hand(const Mat& u, const Mat& cols, const std::vector<double>& log_q,
                                    double tau, const std::vector<std::vector<size_t>>& masked = {}) {
  std::vector<double> out;
  for (size_t i = 0; i < u.size(); ++i) {
    double denom = 0, pos = 0;
    for (size_t j = 0; j < cols.size(); ++j) {
      double s = dot(u[i], cols[j]) / tau - log_q[j];
      if (j == i) pos = s;
      bool skip = !masked.empty() &&
                  std::find(masked[i].begin(), masked[i].end(), j) != masked[i].end();
      if (!skip) denom += std::exp(s);
    }
    out.push_back(std::log(denom) - pos);
  }
  return out;
}

torch::Tensor vec(const std::vector<double>& v) {
  return torch::tensor(v, torch::kFloat64);
}

const Mat kUser = {{0.6, 0.8}, {-0.28, 0.96}, {1.0, 0.0}};
const Mat kItem = {{0.8, 0.6}, {0.0, 1.0}, {-0.6, 0.8}};

}  // namespace

TEST_CASE("inbatch_softmax with logQ matches a float64 hand computation", "[loss]") {
  std::vector<double> log_q{std::log(0.5), std::log(0.1), std::log(0.02)};
  auto opts = InBatchSoftmaxOptions().temperature(0.5);
  auto loss = inbatch_softmax(to_tensor(kUser), to_tensor(kItem), vec(log_q).to(torch::kFloat32),
                              torch::tensor({10L, 11L, 12L}), opts);
  REQUIRE(loss.sizes() == torch::IntArrayRef{3});
  require_close(loss, vec(softmax_by_hand(kUser, kItem, log_q, 0.5)), 1e-5, 1e-6);
  // Without logQ the values differ (the correction is not a no-op here).
  auto plain = inbatch_softmax(to_tensor(kUser), to_tensor(kItem), torch::zeros({3}),
                               torch::tensor({10L, 11L, 12L}), opts);
  require_close(plain, vec(softmax_by_hand(kUser, kItem, {0, 0, 0}, 0.5)), 1e-5, 1e-6);
  CHECK((plain - loss).abs().max().item<double>() > 0.1);
}

TEST_CASE("inbatch_softmax: raising log_q of a column lowers its logit", "[loss]") {
  // Zero embeddings isolate the correction: s_ij = -log_q_j.
  // log_q = (0, 0, log 4): denominators 1 + 1 + 1/4 = 9/4, so
  //   loss_0 = loss_1 = log(9/4), loss_2 = log(9/4) + log 4 = log 9.
  // The opposite sign would give 1 + 1 + 4 = 6 and loss_0 = log 6.
  auto zeros = torch::zeros({3, 2});
  auto ids = torch::tensor({1L, 2L, 3L});
  auto opts = InBatchSoftmaxOptions().temperature(0.1);
  auto loss = inbatch_softmax(zeros, zeros, torch::tensor({0.0f, 0.0f, std::log(4.0f)}), ids, opts);
  require_close(loss, vec({std::log(2.25), std::log(2.25), std::log(9.0)}), 1e-5, 1e-6);

  // With real embeddings: a popular column j = 2 (higher log_q) becomes a weaker negative for the
  // other rows and a harder positive for its own row.
  std::vector<double> base{-1.0, -1.0, -1.0}, popular{-1.0, -1.0, 0.5};
  auto run = [&](const std::vector<double>& lq) {
    return inbatch_softmax(to_tensor(kUser), to_tensor(kItem), vec(lq).to(torch::kFloat32), ids,
                           opts);
  };
  auto before = run(base), after = run(popular);
  require_close(before, vec(softmax_by_hand(kUser, kItem, base, 0.1)), 1e-5, 1e-5);
  require_close(after, vec(softmax_by_hand(kUser, kItem, popular, 0.1)), 1e-5, 1e-5);
  CHECK(after[0].item<double>() < before[0].item<double>());
  CHECK(after[1].item<double>() < before[1].item<double>());
  CHECK(after[2].item<double>() > before[2].item<double>());
}

TEST_CASE("inbatch_softmax masks accidental hits", "[loss]") {
  // Rows 0 and 2 share item 7: column 2 is no negative for row 0, nor column 0 for row 2.
  std::vector<double> log_q{-1.0, -2.0, -1.0};
  auto ids = torch::tensor({7L, 8L, 7L});
  auto opts = InBatchSoftmaxOptions().temperature(0.5);
  auto loss = inbatch_softmax(to_tensor(kUser), to_tensor(kItem), vec(log_q).to(torch::kFloat32),
                              ids, opts);
  require_close(loss, vec(softmax_by_hand(kUser, kItem, log_q, 0.5, {{2}, {}, {0}})), 1e-5, 1e-6);
  auto unmasked = inbatch_softmax(to_tensor(kUser), to_tensor(kItem),
                                  vec(log_q).to(torch::kFloat32), ids,
                                  InBatchSoftmaxOptions().temperature(0.5).remove_accidental_hits(false));
  require_close(unmasked, vec(softmax_by_hand(kUser, kItem, log_q, 0.5)), 1e-5, 1e-6);
  CHECK(std::abs(unmasked[0].item<double>() - loss[0].item<double>()) > 1e-3);
  CHECK(unmasked[1].item<double>() == Approx(loss[1].item<double>()));
}

TEST_CASE("inbatch_softmax appends mixed negatives as extra columns", "[loss]") {
  const Mat extra = {{0.0, -1.0}, {0.6, 0.8}};
  Mat cols = kItem;
  cols.insert(cols.end(), extra.begin(), extra.end());
  std::vector<double> log_q{-1.0, -2.0, -1.5, -3.0, -3.0};
  // Extra column 4 is item 21, row 1's positive: masked for row 1 only.
  auto ids = torch::tensor({20L, 21L, 22L, 30L, 21L});
  auto opts = InBatchSoftmaxOptions().temperature(0.5);
  auto loss = inbatch_softmax(to_tensor(kUser), to_tensor(kItem), vec(log_q).to(torch::kFloat32),
                              ids, opts, to_tensor(extra));
  require_close(loss, vec(softmax_by_hand(kUser, cols, log_q, 0.5, {{}, {4}, {}})), 1e-5, 1e-6);
  // log_q must cover every column.
  CHECK_THROWS(inbatch_softmax(to_tensor(kUser), to_tensor(kItem), torch::zeros({3}), ids, opts,
                               to_tensor(extra)));
}

namespace {

/// The contrastive loss per row in float64, one-sided and symmetric: row i of z1 against every
/// row of z2 and then `e2`; for the other direction, row i of z2 against z1 and then `e1`.
std::pair<std::vector<double>, std::vector<double>> contrastive_by_hand(const Mat& z1, const Mat& z2, double tau,
                                                                        const Mat& e2 = {}, const Mat& e1 = {}) {
  std::vector<double> one, sym;
  for (size_t i = 0; i < z1.size(); ++i) {
    double row = 0, col = 0;
    for (size_t j = 0; j < z1.size(); ++j) {
      row += std::exp(dot(z1[i], z2[j]) / tau);
      col += std::exp(dot(z2[i], z1[j]) / tau);
    }
    for (const auto& e : e2) row += std::exp(dot(z1[i], e) / tau);
    for (const auto& e : e1) col += std::exp(dot(z2[i], e) / tau);
    const double pos = dot(z1[i], z2[i]) / tau;
    one.push_back(std::log(row) - pos);
    sym.push_back(0.5 * ((std::log(row) - pos) + (std::log(col) - pos)));
  }
  return {one, sym};
}

}  // namespace

TEST_CASE("contrastive loss matches float64, one-sided and symmetric", "[loss]") {
  const Mat z1 = {{1.0, 0.0}, {0.6, 0.8}, {0.0, -1.0}};
  const Mat z2 = {{0.8, 0.6}, {0.0, 1.0}, {-0.6, -0.8}};
  const double tau = 0.2;
  const auto [one, sym] = contrastive_by_hand(z1, z2, tau);
  require_close(contrastive(to_tensor(z1), to_tensor(z2), tau), vec(one), 1e-5, 1e-6);
  require_close(contrastive(to_tensor(z1), to_tensor(z2), tau, true), vec(sym), 1e-5, 1e-6);
  CHECK(std::abs(one[0] - sym[0]) > 1e-3);  // the two directions really differ here
}

TEST_CASE("contrastive loss with extra negatives (other ranks' views) matches float64", "[loss]") {
  const Mat z1 = {{1.0, 0.0}, {0.6, 0.8}};
  const Mat z2 = {{0.8, 0.6}, {0.0, 1.0}};
  const Mat e2 = {{-0.6, -0.8}, {0.6, -0.8}};  // other items' view 2: extra columns for z1's rows
  const Mat e1 = {{0.0, -1.0}};                 // other items' view 1: extra columns for z2's rows
  const double tau = 0.25;
  const auto [one, sym] = contrastive_by_hand(z1, z2, tau, e2, e1);
  auto a = to_tensor(z1), b = to_tensor(z2), x2 = to_tensor(e2), x1 = to_tensor(e1);
  require_close(contrastive(a, b, tau, false, true, x2), vec(one), 1e-5, 1e-6);
  require_close(contrastive(a, b, tau, true, true, x2, x1), vec(sym), 1e-5, 1e-6);
  require_close(contrastive(a, b, tau, true, false, x2, x1), vec(sym), 1e-5, 1e-6);  // reference cross-entropy
  const double mean_one = (one[0] + one[1]) / 2, mean_sym = (sym[0] + sym[1]) / 2;
  require_close(contrastive_mean(a, b, tau, false, true, true, x2).item<double>(), mean_one, 1e-5);  // fused kernel
  require_close(contrastive_mean(a, b, tau, false, true, false, x2).item<double>(), mean_one, 1e-5);
  require_close(contrastive_mean(a, b, tau, true, true, true, x2, x1).item<double>(), mean_sym, 1e-5);
  // The extras change the loss, and the symmetric loss needs extras for both views or neither.
  CHECK(std::abs(contrastive_mean(a, b, tau).item<double>() - mean_one) > 1e-3);
  CHECK_THROWS(contrastive(a, b, tau, true, true, x2));
  CHECK_THROWS(contrastive(a, b, tau, false, true, x2, x1));  // view-1 extras need the symmetric loss
  // Empty extra blocks count as none.
  auto none = torch::empty({0, 2}, torch::kFloat32);
  require_close(contrastive(a, b, tau, true, true, none, none), contrastive(a, b, tau, true), 1e-6, 1e-7);
  CHECK_THROWS(contrastive(a, b, tau, false, true, torch::zeros({2, 3})));
}

TEST_CASE("spread_out matches float64", "[loss]") {
  auto by_hand = [](const Mat& q) {
    double m1 = 0, m2 = 0, pairs = 0;
    for (size_t i = 0; i < q.size(); ++i)
      for (size_t j = 0; j < q.size(); ++j)
        if (i != j) {
          double d = dot(q[i], q[j]);
          m1 += d;
          m2 += d * d;
          pairs += 1;
        }
    m1 /= pairs;
    m2 /= pairs;
    return m1 * m1 + std::max(0.0, m2 - 1.0 / static_cast<double>(q[0].size()));
  };
  const Mat close = {{1.0, 0.0}, {0.8, 0.6}, {0.6, 0.8}};  // M2 = 0.6405 > 1/2: hinge active
  const Mat spread = {{1.0, 0.0}, {0.0, 1.0}, {-1.0, 0.0}};  // M1 = -1/3, M2 = 1/3: hinge off
  require_close(spread_out(to_tensor(close)).item<double>(), by_hand(close), 1e-6);
  require_close(spread_out(to_tensor(close)).item<double>(),
                std::pow(2.36 / 3, 2) + (0.64 + 0.36 + 0.9216) / 3 - 0.5, 1e-6);
  require_close(spread_out(to_tensor(spread)).item<double>(), 1.0 / 9.0, 1e-6);
  require_close(spread_out(to_tensor(spread)).item<double>(), by_hand(spread), 1e-6);
}

TEST_CASE("streaming logQ estimates the candidates' expected counts that click counts give",
          "[loss]") {
  // A stationary stream: batches of B positives drawn from p_j proportional to (j + 1)^-1.1
  // over N items. The logQ correction is log(B p_j + M / N) from the counts; the streaming
  // estimate 1 / gap is already the expected count per step (about B p_j, below saturation),
  // so log(1 / gap + M / N) must come out close to it, mixed negatives (M) included.
  const int64_t N = 200, B = 64, steps = 6000;
  const double M = 64;
  std::vector<double> w(N);
  for (int64_t j = 0; j < N; ++j) w[j] = std::pow(static_cast<double>(j + 1), -1.1);
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  std::mt19937_64 rng(7);
  std::discrete_distribution<int64_t> draw(w.begin(), w.end());
  StreamingFrequency f(1 << 12, 0.02, static_cast<double>(N) / static_cast<double>(B));
  std::vector<int64_t> batch(B);
  for (int64_t step = 0; step < steps; ++step) {
    for (auto& id : batch) id = draw(rng);
    f.update(batch.data(), B, step);
  }
  double sum_diff = 0;
  int compared = 0;
  for (int64_t j = 0; j < N; ++j) {
    const double expected = static_cast<double>(B) * w[j] / total;
    if (expected < 0.03 || expected > 0.3) continue;  // rare items: few sightings; head: saturated
    const double counts = log_expected_count(expected, M, static_cast<double>(N));
    const double streaming =
        log_expected_count(std::exp(static_cast<double>(f.estimate(&j, 1)[0])), M, static_cast<double>(N));
    INFO("item " << j << " B p_j " << expected);
    CHECK(std::abs(streaming - counts) < 0.5);
    sum_diff += std::abs(streaming - counts);
    ++compared;
  }
  REQUIRE(compared >= 20);
  CHECK(sum_diff / compared < 0.2);
  // An id never seen reads the initial gap N / B: a uniform item's B / N, plus M / N.
  const int64_t unseen = 1000003;
  CHECK(log_expected_count(std::exp(static_cast<double>(f.estimate(&unseen, 1)[0])), M,
                           static_cast<double>(N)) ==
        Approx(std::log((static_cast<double>(B) + M) / static_cast<double>(N))).epsilon(1e-5));
  // estimate() does not count a sighting.
  const int64_t head = 0;
  const float before = f.estimate(&head, 1)[0];
  for (int k = 0; k < 5; ++k) CHECK(f.estimate(&head, 1)[0] == before);
  // No mass at all stays finite.
  CHECK(std::isfinite(log_expected_count(0.0, 0.0, 10.0)));
}

TEST_CASE("StreamingFrequency estimates 1/gap", "[loss]") {
  const double alpha = 0.5, initial = 100.0;
  StreamingFrequency f(1024, alpha, initial);
  const int64_t k = 4;
  int64_t id = 37;
  double gap = initial;
  for (int64_t n = 0; n < 40; ++n) {
    int64_t step = n * k;
    if (n > 0) gap = (1 - alpha) * gap + alpha * static_cast<double>(k);
    auto est = f.update(&id, 1, step);
    REQUIRE(est.size() == 1);
    INFO("sighting " << n);
    require_close(est[0], -std::log(gap), 1e-5);
  }
  require_close(std::exp(-f.update(&id, 1, 40 * k)[0]), static_cast<double>(k), 1e-4);

  // A never-seen id reports the initial gap; a repeat within a step does not move it.
  int64_t ids[3] = {5, 5, -3};
  auto est = f.update(ids, 3, 1000);
  require_close(est[0], -std::log(initial), 1e-5);
  require_close(est[1], -std::log(initial), 1e-5);
  require_close(est[2], -std::log(initial), 1e-5);
  // Gaps below one step clamp the probability at 1.
  StreamingFrequency g(8, 1.0, 0.5);
  int64_t one = 1;
  CHECK(g.update(&one, 1, 0)[0] == 0.0f);
}
