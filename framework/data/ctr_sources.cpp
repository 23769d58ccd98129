#include "framework/data/ctr_sources.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace recsys::data {

Registry<CtrSourceFactory>& ctr_sources() {
  static Registry<CtrSourceFactory> registry("CTR dataset");
  return registry;
}

CtrDataOptions parse_ctr_data_options(const config::Reader& r) {
  CtrDataOptions o;
  auto& s = o.samples;
  s.max_history = r.get<int64_t>("max_history", s.max_history);
  s.negatives = r.get<int64_t>("negatives", s.negatives);
  s.negative_sampling =
      r.choice("negative_sampling", s.negative_sampling, {"uniform", "popularity"});
  s.split = r.choice("split", s.split, {"last", "fraction"});
  s.test_fraction = r.get<double>("test_fraction", s.test_fraction);
  s.valid_fraction = r.get<double>("valid_fraction", s.valid_fraction);
  s.min_history = r.get<int64_t>("min_history", s.min_history);
  s.seed = static_cast<uint64_t>(r.get<int64_t>("seed", 0));
  o.min_user_length = r.get<int64_t>("min_user_length", o.min_user_length);
  if (s.max_history < 1) r.fail("max_history", "must be at least 1");
  if (s.negatives < 0) r.fail("negatives", "must be >= 0");
  if (s.min_history < 0) r.fail("min_history", "must be >= 0");
  if (s.test_fraction < 0 || s.test_fraction >= 1) r.fail("test_fraction", "must be in [0, 1)");
  if (s.valid_fraction < 0 || s.valid_fraction >= 1) r.fail("valid_fraction", "must be in [0, 1)");
  if (s.test_fraction + s.valid_fraction >= 1)
    r.fail("valid_fraction", "valid_fraction + test_fraction must be < 1");
  if (o.min_user_length < 1) r.fail("min_user_length", "must be at least 1");
  return o;
}

InteractionLog make_synthetic_ctr(const SyntheticCtrOptions& o) {
  TORCH_CHECK(o.num_users >= 1 && o.num_items >= o.num_categories && o.num_categories >= 2,
              "make_synthetic_ctr: need num_users >= 1 and num_items >= num_categories >= 2");
  TORCH_CHECK(o.interests >= 1 && o.interests <= o.num_categories,
              "make_synthetic_ctr: interests must be in [1, num_categories]");
  TORCH_CHECK(o.min_length >= 1 && o.max_length >= o.min_length,
              "make_synthetic_ctr: need 1 <= min_length <= max_length");
  std::mt19937_64 rng(o.seed);
  InteractionLog log;
  const int64_t C = o.num_categories;
  log.num_items = kFirstId + o.num_items;
  log.num_categories = kFirstId + C;
  log.num_users = kFirstId + o.num_users;
  log.item_category.assign(log.num_items, kPaddingId);
  log.item_category[kUnknownId] = kUnknownId;
  log.item_names = {"<pad>", "<unk>"};
  log.category_names = {"<pad>", "<unk>"};
  log.user_names = {"<pad>", "<unk>"};
  for (int64_t c = 0; c < C; ++c) log.category_names.push_back("c" + std::to_string(c));
  // Items of category c: kFirstId + c, kFirstId + c + C, ...; popularity Zipf by rank inside it.
  std::vector<std::vector<int64_t>> members(C);
  for (int64_t i = 0; i < o.num_items; ++i) {
    log.item_category[kFirstId + i] = kFirstId + i % C;
    log.item_names.push_back("i" + std::to_string(i));
    members[i % C].push_back(kFirstId + i);
  }
  std::vector<std::discrete_distribution<int64_t>> within(C);
  for (int64_t c = 0; c < C; ++c) {
    std::vector<double> w(members[c].size());
    for (size_t r = 0; r < w.size(); ++r) w[r] = 1.0 / std::pow(static_cast<double>(r + 1), o.zipf);
    within[c] = std::discrete_distribution<int64_t>(w.begin(), w.end());
  }
  std::uniform_int_distribution<int64_t> any_category(0, C - 1);
  std::uniform_int_distribution<int64_t> length(o.min_length, o.max_length);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  log.user_items.assign(log.num_users, {});
  log.user_times.assign(log.num_users, {});
  for (int64_t u = 0; u < o.num_users; ++u) {
    log.user_names.push_back("u" + std::to_string(u));
    std::vector<int64_t> interests;
    while (static_cast<int64_t>(interests.size()) < o.interests) {
      int64_t c = any_category(rng);
      if (std::find(interests.begin(), interests.end(), c) == interests.end())
        interests.push_back(c);
    }
    std::uniform_int_distribution<int64_t> pick(0, o.interests - 1);
    const int64_t n = length(rng);
    int64_t previous = -1;
    auto& items = log.user_items[kFirstId + u];
    auto& times = log.user_times[kFirstId + u];
    for (int64_t t = 0; t < n; ++t) {
      if (coin(rng) < o.drift) {
        int64_t c = any_category(rng);
        if (std::find(interests.begin(), interests.end(), c) == interests.end())
          interests[pick(rng)] = c;
      }
      int64_t c;
      if (coin(rng) >= o.focus) {
        c = any_category(rng);
      } else if (previous >= 0 && coin(rng) < o.repeat &&
                 std::find(interests.begin(), interests.end(), previous) != interests.end()) {
        c = previous;
      } else {
        c = interests[pick(rng)];
      }
      items.push_back(members[c][within[c](rng)]);
      times.push_back(t);
      previous = c;
    }
  }
  return log;
}

namespace {

/// A column given as a name (string) or a 0-based index (integer) -> CsvOptions' string form.
std::string parse_column(const config::Reader& columns, const std::string& key, bool header,
                         bool required) {
  auto v = columns.raw(key);
  if (v.is_null()) {
    if (required) columns.fail(key, "required column is missing (a name or a 0-based index)");
    return "";
  }
  if (v.is_number_integer()) {
    if (header)
      columns.fail(key, "a column index needs data.header = false; with a header, name the column");
    if (v.get<int64_t>() < 0) columns.fail(key, "a column index must be >= 0");
    return std::to_string(v.get<int64_t>());
  }
  if (!v.is_string())
    columns.fail(key, "expected a column name (string) or a 0-based index (integer)");
  auto s = v.get<std::string>();
  if (s.empty()) columns.fail(key, "the column name is empty");
  if (!header && !std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    columns.fail(key, "without a header (data.header = false) give a 0-based column index");
  return s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), size_t{0});
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

}  // namespace

void register_builtin_ctr_sources() {
  auto& reg = ctr_sources();
  if (reg.contains("synthetic")) return;
  reg.add(
      "synthetic",
      [](const config::Reader& r) -> CtrSource {
        SyntheticCtrOptions o;
        o.num_users = r.get<int64_t>("num_users", o.num_users);
        o.num_items = r.get<int64_t>("num_items", o.num_items);
        o.num_categories = r.get<int64_t>("num_categories", o.num_categories);
        o.interests = r.get<int64_t>("interests", o.interests);
        o.min_length = r.get<int64_t>("min_length", o.min_length);
        o.max_length = r.get<int64_t>("max_length", o.max_length);
        o.drift = r.get<double>("drift", o.drift);
        o.focus = r.get<double>("focus", o.focus);
        o.repeat = r.get<double>("repeat", o.repeat);
        o.zipf = r.get<double>("zipf", o.zipf);
        o.seed = static_cast<uint64_t>(r.get<int64_t>("seed", 0));
        if (o.num_users < 1) r.fail("num_users", "must be at least 1");
        if (o.num_categories < 2) r.fail("num_categories", "must be at least 2");
        if (o.num_items < o.num_categories) r.fail("num_items", "must be >= num_categories");
        if (o.interests < 1 || o.interests > o.num_categories)
          r.fail("interests", "must be in [1, num_categories]");
        if (o.min_length < 1) r.fail("min_length", "must be at least 1");
        if (o.max_length < o.min_length) r.fail("max_length", "must be >= min_length");
        for (auto [key, value] : {std::pair<const char*, double>{"drift", o.drift},
                                  {"focus", o.focus},
                                  {"repeat", o.repeat}})
          if (value < 0 || value > 1) r.fail(key, "must be in [0, 1]");
        if (o.zipf < 0) r.fail("zipf", "must be >= 0");
        return [o] { return make_synthetic_ctr(o); };
      },
      "seeded behaviour logs: drifting category interests, Zipf items inside a category");
  reg.add(
      "taobao",
      [](const config::Reader& r) -> CtrSource {
        auto path = r.require<std::string>("path");
        auto behaviors = r.get<std::vector<std::string>>(
            "behaviors", std::vector<std::string>{"pv", "buy", "cart", "fav"});
        if (behaviors.empty()) r.fail("behaviors", "give at least one of pv, buy, cart, fav");
        for (auto& b : behaviors)
          if (b != "pv" && b != "buy" && b != "cart" && b != "fav")
            r.fail("behaviors", "unknown behaviour '" + b + "' (known: pv, buy, cart, fav)");
        return [path, behaviors] { return load_taobao(path, behaviors); };
      },
      "Taobao UserBehavior CSV (user,item,category,behavior,timestamp) from data.path");
  reg.add(
      "amazon",
      [](const config::Reader& r) -> CtrSource {
        auto reviews = r.require<std::string>("reviews");
        auto meta = r.require<std::string>("meta");
        return [reviews, meta] { return load_amazon(reviews, meta); };
      },
      "Amazon 5-core reviews (data.reviews) with their meta file (data.meta)");
  reg.add(
      "interactions_csv",
      [](const config::Reader& r) -> CtrSource {
        CsvOptions o;
        o.path = r.require<std::string>("path");
        auto delimiter = r.get<std::string>("delimiter", ",");
        if (delimiter.size() != 1) r.fail("delimiter", "must be exactly one character");
        o.delimiter = delimiter[0];
        o.header = r.get<bool>("header", true);
        if (!r.has("columns")) {
          // A misspelt "columns" would otherwise only surface as "missing": name the typo.
          if (r.node().is_object())
            for (auto& [key, value] : r.node().items())
              if (key != "columns" && edit_distance(key, "columns") <= 2)
                r.fail(key, "unknown key; did you mean 'columns'?");
          r.fail("columns",
                 "required: {\"user\": C, \"item\": C} (+ optional category, timestamp), C a "
                 "column name or a 0-based index");
        }
        auto c = r.child("columns");
        o.user = parse_column(c, "user", o.header, true);
        o.item = parse_column(c, "item", o.header, true);
        o.category = parse_column(c, "category", o.header, false);
        o.timestamp = parse_column(c, "timestamp", o.header, false);
        return [o] { return load_interactions_csv(o); };
      },
      "a delimited file of behaviours: data.path, delimiter, header, columns");
}

}  // namespace recsys::data
