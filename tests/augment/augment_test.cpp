#include <cmath>
#include <set>

#include "augment/augmentation.h"
#include "augment/masking.h"
#include "support.h"

using namespace recsys;
using augment::FeatureBatch;

namespace {

data::FeatureSpec spec(const std::string& name, data::FeatureKind kind, int64_t vocab, int64_t len) {
  return data::FeatureSpec{name, kind, vocab, len};
}

std::vector<data::FeatureSpec> specs3() {
  return {spec("item_id", data::FeatureKind::kSingle, 100, 1), spec("tags", data::FeatureKind::kMulti, 50, 3),
          spec("city", data::FeatureKind::kSingle, 10, 1)};
}

/// M examples with distinct non-default values: item ids 2.., 3 tags each, a city.
FeatureBatch batch3(int64_t M) {
  auto ids = torch::arange(2, 2 + M, torch::kInt64).remainder(98).add(2).unsqueeze(1);
  auto tags = torch::stack({torch::full({M}, 5, torch::kInt64), torch::full({M}, 6, torch::kInt64),
                            torch::full({M}, 7, torch::kInt64)}, 1);
  auto city = torch::full({M, 1}, 3, torch::kInt64);
  return {ids, tags, city};
}

std::shared_ptr<augment::Augmentation> build(const config::Json& j, const augment::AugmentContext& ctx) {
  augment::register_builtin_augmentations();
  config::Reader r(j);
  auto type = r.require<std::string>("type");
  auto builder = augment::augmentations().get(type)(r);
  r.check_unknown();
  return builder(ctx);
}

augment::AugmentContext ctx3() {
  augment::AugmentContext ctx;
  ctx.specs = specs3();
  return ctx;
}

/// True where the row equals the default value [kDefaultIndex, 0, ...].
torch::Tensor is_default(const torch::Tensor& t) {
  auto first = t.select(1, 0) == data::kDefaultIndex;
  if (t.size(1) == 1) return first;
  return first & (t.slice(1, 1) == 0).all(1);
}

}  // namespace

TEST_CASE("random_mask replaces whole features by the default value", "[augment]") {
  auto gen = at::detail::createCPUGenerator(3);
  const int64_t M = 4000;
  auto b = batch3(M);
  SECTION("p = 1 masks everything, p = 0 nothing") {
    auto all = build({{"type", "random_mask"}, {"p", 1.0}}, ctx3())->transform(b, gen);
    for (auto& t : all) REQUIRE(is_default(t).all().item<bool>());
    auto none = build({{"type", "random_mask"}, {"p", 0.0}}, ctx3())->transform(b, gen);
    for (size_t f = 0; f < b.size(); ++f) REQUIRE(torch::equal(none[f], b[f]));
  }
  SECTION("p = 0.3: masked rows hold the default, others are untouched, rate within binomial bounds") {
    auto out = build({{"type", "random_mask"}, {"p", 0.3}, {"features", {{"city", 0.0}}}}, ctx3())->transform(b, gen);
    for (size_t f = 0; f < 2; ++f) {
      auto masked = is_default(out[f]);
      auto same = (out[f] == b[f]).all(1);
      REQUIRE((masked | same).all().item<bool>());
      double rate = masked.to(torch::kFloat64).mean().item<double>();
      double sd = std::sqrt(0.3 * 0.7 / M);
      REQUIRE(std::abs(rate - 0.3) < 4 * sd);
    }
    REQUIRE(torch::equal(out[2], b[2]));  // per-feature override p = 0
  }
  SECTION("an override naming an unknown feature is a config error with its path") {
    REQUIRE_THROWS_WITH(build({{"type", "random_mask"}, {"features", {{"colour", 0.5}}}}, ctx3()),
                        Catch::Contains("features.colour") && Catch::Contains("item_id, tags, city"));
  }
}

TEST_CASE("dropout removes values inside multi-valued features only", "[augment]") {
  auto gen = at::detail::createCPUGenerator(5);
  const int64_t M = 3000;
  auto b = batch3(M);
  auto out = build({{"type", "dropout"}, {"p", 0.5}}, ctx3())->transform(b, gen);
  REQUIRE(torch::equal(out[0], b[0]));
  REQUIRE(torch::equal(out[2], b[2]));
  auto tags = out[1];
  auto emptied = is_default(tags);
  // P(all three dropped) = 1/8: those rows become the default value.
  double empty_rate = emptied.to(torch::kFloat64).mean().item<double>();
  REQUIRE(std::abs(empty_rate - 0.125) < 4 * std::sqrt(0.125 * 0.875 / M));
  // Elsewhere every position either keeps its value or is padding.
  auto kept = tags.index({~emptied});
  auto orig = b[1].index({~emptied});
  REQUIRE(((kept == orig) | (kept == 0)).all().item<bool>());
  double drop_rate = (kept == 0).to(torch::kFloat64).sum().item<double>() / (3.0 * M);
  // Among non-emptied rows, dropped values: E = (1.5 - 3/8) / 3 per position of all rows.
  REQUIRE(std::abs(drop_rate - (1.5 - 0.375) / 3.0) < 0.03);
}

TEST_CASE("complementary views are disjoint and cover every feature", "[augment]") {
  auto gen = at::detail::createCPUGenerator(11);
  auto b = batch3(500);
  for (const char* per : {"example", "batch"}) {
    auto aug = build({{"type", "complementary"}, {"per", per}}, ctx3());
    REQUIRE(aug->paired());
    auto [v1, v2] = aug->views(b, gen);
    torch::Tensor n1 = torch::zeros({500}, torch::kInt64), n2 = torch::zeros({500}, torch::kInt64);
    for (size_t f = 0; f < b.size(); ++f) {
      auto m1 = is_default(v1[f]), m2 = is_default(v2[f]);
      REQUIRE((m1 ^ m2).all().item<bool>());  // exactly one view masks each feature
      REQUIRE(torch::equal(v1[f].index({~m1}), b[f].index({~m1})));
      n1 += m1.to(torch::kInt64);
      n2 += m2.to(torch::kInt64);
    }
    REQUIRE((n1 + n2 == 3).all().item<bool>());
    REQUIRE(((n1 == 1) | (n1 == 2)).all().item<bool>());  // a random half of 3 features
    if (std::string(per) == "example") {
      // Uniform permutations: with k features masked per row (k drawn once per call for an odd
      // count), each feature is masked in view 1 for about k / 3 of the rows.
      const double share = n1.to(torch::kDouble).mean().item<double>() / 3;
      for (size_t f = 0; f < b.size(); ++f) {
        const double rate = is_default(v1[f]).to(torch::kDouble).mean().item<double>();
        CHECK(rate > share - 0.08);
        CHECK(rate < share + 0.08);
      }
    }
  }
  // Four features: exactly two masked in each view, each of the 6 pairs about equally often.
  auto gen4 = at::detail::createCPUGenerator(12);
  augment::AugmentContext ctx4;
  ctx4.specs = specs3();
  ctx4.specs.push_back(spec("brand", data::FeatureKind::kSingle, 20, 1));
  auto b4 = batch3(4000);
  b4.push_back(torch::full({4000, 1}, 4, torch::kInt64));
  auto [w1, w2] = build({{"type", "complementary"}}, ctx4)->views(b4, gen4);
  std::vector<torch::Tensor> m(4);
  for (size_t f = 0; f < 4; ++f) m[f] = is_default(w1[f]).to(torch::kInt64);
  REQUIRE(torch::equal(m[0] + m[1] + m[2] + m[3], torch::full({4000}, 2, torch::kInt64)));
  for (size_t a = 0; a < 4; ++a)
    for (size_t c = a + 1; c < 4; ++c) {
      const auto pairs = (m[a] * m[c]).sum().item<int64_t>();
      CHECK(pairs > 4000 / 6 * 0.85);
      CHECK(pairs < 4000 / 6 * 1.15);
    }
}

TEST_CASE("mask_rows_both equals mask_rows with the mask and its complement", "[augment]") {
  recsys::testing::seed(12);
  // A strided mask (a column of a [M, F] group), bags of widths 3, 1 and 0, a numeric feature.
  auto group = torch::rand({9, 4}) < 0.5;
  for (int64_t width : {3, 1, 0}) {
    CAPTURE(width);
    auto t = torch::randint(2, 50, {9, width}, torch::kInt64);
    const auto before = t.clone();
    auto g = group.select(1, 2);
    auto [a, b] = augment::mask_rows_both(t, g);
    CHECK(torch::equal(a, augment::mask_rows(t, g)));
    CHECK(torch::equal(b, augment::mask_rows(t, ~g)));
    CHECK(torch::equal(t, before));  // the input is left as it was
  }
  auto numeric = torch::rand({9, 1});
  auto [a, b] = augment::mask_rows_both(numeric, group.select(1, 0));
  CHECK(a.is_same(numeric));
  CHECK(b.is_same(numeric));
}

TEST_CASE("mutual information matches hand-computed values", "[augment][mi]") {
  // 4 items; a == b (MI = ln 2), c independent of a (MI = 0), d multi-valued.
  data::FeatureTable t(4);
  t.add_categorical(spec("a", data::FeatureKind::kSingle, 4, 1), {{2}, {2}, {3}, {3}});
  t.add_categorical(spec("b", data::FeatureKind::kSingle, 4, 1), {{2}, {2}, {3}, {3}});
  t.add_categorical(spec("c", data::FeatureKind::kSingle, 4, 1), {{2}, {3}, {2}, {3}});
  // d: item0 {2,3}, item1 {2}, item2 {3}, item3 {3}. Joint with a (each item has unit mass):
  // p(a=2,d=2) = (0.5 + 1)/4, p(a=2,d=3) = 0.5/4, p(a=3,d=3) = 2/4; p(d=2) = 1.5/4, p(d=3) = 2.5/4.
  t.add_categorical(spec("d", data::FeatureKind::kMulti, 4, 2), {{2, 3}, {2}, {3}, {3}});
  auto mi = augment::mutual_information(t, {0, 1, 2, 3});
  testing::require_close(mi[0][1], std::log(2.0), 1e-12);
  testing::require_close(mi[0][2], 0.0, 1e-12);
  testing::require_close(mi[0][0], std::log(2.0), 1e-12);  // entropy on the diagonal
  double pa = 0.5, p22 = 1.5 / 4, p23 = 0.5 / 4, p33 = 2.0 / 4, pd2 = 1.5 / 4, pd3 = 2.5 / 4;
  double expected = p22 * std::log(p22 / (pa * pd2)) + p23 * std::log(p23 / (pa * pd3)) + p33 * std::log(p33 / (pa * pd3));
  testing::require_close(mi[0][3], expected, 1e-12);
  testing::require_close(mi[3][0], expected, 1e-12);
}

TEST_CASE("correlated groups follow the MI matrix", "[augment][mi]") {
  std::vector<std::vector<double>> mi = {{1.0, 0.9, 0.1, 0.2}, {0.9, 1.0, 0.3, 0.0}, {0.1, 0.3, 1.0, 0.8}, {0.2, 0.0, 0.8, 1.0}};
  auto g = augment::correlated_groups(mi, 2);
  REQUIRE(g[0] == std::vector<int64_t>{0, 1});
  REQUIRE(g[1] == std::vector<int64_t>{1, 0});
  REQUIRE(g[2] == std::vector<int64_t>{2, 3});
  REQUIRE(g[3] == std::vector<int64_t>{3, 2});
  auto g3 = augment::correlated_groups(mi, 3);
  REQUIRE(g3[0] == std::vector<int64_t>{0, 1, 3});
}

TEST_CASE("correlated_mask masks a seed with its correlated partners and the complement in view 2", "[augment][mi]") {
  // Features: a == b, c == d, e independent noise; fraction 0.4 of 5 -> groups of 2.
  const int64_t n = 64;
  std::vector<std::vector<int64_t>> a(n), c(n), e(n);
  for (int64_t i = 0; i < n; ++i) {
    a[i] = {2 + i % 4};
    c[i] = {2 + (i / 4) % 4};
    e[i] = {2 + (i * 7 + i / 3) % 5};
  }
  data::RetrievalData d;
  d.items = data::FeatureTable(n);
  d.items.add_categorical(spec("a", data::FeatureKind::kSingle, 6, 1), a);
  d.items.add_categorical(spec("b", data::FeatureKind::kSingle, 6, 1), a);
  d.items.add_categorical(spec("c", data::FeatureKind::kSingle, 6, 1), c);
  d.items.add_categorical(spec("d", data::FeatureKind::kSingle, 6, 1), c);
  d.items.add_categorical(spec("e", data::FeatureKind::kSingle, 7, 1), e);
  augment::AugmentContext ctx;
  ctx.specs = d.items.specs();
  ctx.table_columns = {0, 1, 2, 3, 4};
  ctx.data = &d;
  auto aug = build({{"type", "correlated_mask"}, {"fraction", 0.4}}, ctx);
  std::vector<int64_t> rows(n);
  for (int64_t i = 0; i < n; ++i) rows[i] = i;
  auto b = d.items.gather(rows.data(), n);
  auto gen = at::detail::createCPUGenerator(2);
  auto [v1, v2] = aug->views(b, gen);
  std::set<std::set<int>> allowed = {{0, 1}, {2, 3}};
  std::set<std::set<int>> seen;
  for (int64_t i = 0; i < n; ++i) {
    std::set<int> masked;
    for (int f = 0; f < 5; ++f) {
      bool m1 = is_default(v1[f]).index({i}).item<bool>(), m2 = is_default(v2[f]).index({i}).item<bool>();
      REQUIRE(m1 != m2);
      if (m1) masked.insert(f);
    }
    REQUIRE(masked.size() == 2);
    // The seed e's partner is whichever has the most MI with it; a/b and c/d always pair up.
    if (!masked.count(4)) REQUIRE(allowed.count(masked));
    seen.insert(masked);
  }
  REQUIRE(seen.size() >= 2);
}

TEST_CASE("a paired augmentation must come first in a chain", "[augment]") {
  augment::register_builtin_augmentations();
  config::Json j = {{"augment", {{{"type", "dropout"}}, {{"type", "complementary"}}}}};
  config::Reader r(j);
  auto make = augment::parse_chain(r, "augment");
  REQUIRE_THROWS_WITH(make(ctx3()), Catch::Contains("must come first"));
  try {
    make(ctx3());
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK(e.path() == "augment[1].type");  // the step's place in the config
  }
}
