#include <filesystem>
#include <fstream>

#include "framework/cli/commands.h"
#include "framework/config/config.h"
#include "framework/train/experiment.h"
#include "framework/train/sweep.h"
#include "support.h"

using namespace recsys;
namespace fs = std::filesystem;

namespace {
nlohmann::json train_tiny(const std::vector<std::string>& overrides) {
  cli::register_builtins();
  auto config = config::resolve("configs/tests/twotower_tiny.json", overrides);
  auto e = train::parse_experiment(config);
  return train::run_experiment(e, train::RunDir());
}
}  // namespace

TEST_CASE("ssl.alpha = 0 reproduces the baseline exactly", "[ssl]") {
  auto base = train_tiny({"train.max_steps=4"});
  auto zero = train_tiny({"train.max_steps=4", "ssl.alpha=0",
                          R"(ssl.augment=[{"type":"correlated_mask"},{"type":"dropout"}])"});
  REQUIRE(base["metrics"] == zero["metrics"]);
  REQUIRE(base["valid_metrics"] == zero["valid_metrics"]);
  auto with_ssl = train_tiny({"train.max_steps=4", "ssl.alpha=1",
                              R"(ssl.augment=[{"type":"correlated_mask"},{"type":"dropout"}])"});
  REQUIRE(with_ssl["valid_metrics"] != base["valid_metrics"]);
}

TEST_CASE("ssl.alpha > 0 without an augmentation chain is rejected at its path", "[ssl]") {
  cli::register_builtins();
  auto config = config::resolve("configs/tests/twotower_tiny.json", {"ssl.alpha=0.5"});
  try {
    train::parse_experiment(config);
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    REQUIRE(e.path() == "ssl.augment");
  }
}

TEST_CASE("retrieval config: empty chains, projection widths and repeated features are rejected at their paths", "[ssl]") {
  cli::register_builtins();
  auto path_of_error = [](const std::vector<std::string>& overrides) {
    auto config = config::resolve("configs/tests/twotower_tiny.json", overrides);
    try {
      train::parse_experiment(config);
    } catch (const ConfigError& e) {
      return e.path();
    }
    return std::string("(accepted)");
  };
  // An empty chain would give two identical views.
  CHECK(path_of_error({"ssl.alpha=0.5", "ssl.augment=[]"}) == "ssl.augment");
  CHECK(path_of_error({"ssl.projection=[0]"}) == "ssl.projection");
  CHECK(path_of_error({"ssl.projection=[-64]"}) == "ssl.projection");
  CHECK(path_of_error({"ssl.projection=[32]"}) == "(accepted)");
  CHECK(path_of_error({"model.item_features=[\"categories\",\"categories\"]"}) == "model.item_features");
}

TEST_CASE("a sweep skips finished runs and re-runs only missing ones", "[ssl][sweep]") {
  cli::register_builtins();
  auto dir = testing::temp_dir("sweep_resume");
  train::SweepOptions o;
  o.sweep_path = "configs/tests/ssl_sweep_tiny.json";
  o.out_dir = dir.string();
  o.log_level = "warn";
  REQUIRE(train::run_sweep(o) == 0);
  auto runs = dir / "runs";
  std::vector<std::string> names{"baseline_seed_1", "baseline_seed_2", "cfm_seed_1", "cfm_seed_2"};
  std::map<std::string, fs::file_time_type> stamps;
  for (auto& n : names) {
    REQUIRE(fs::exists(runs / n / "results.json"));
    stamps[n] = fs::last_write_time(runs / n / "results.json");
  }
  fs::remove(runs / "cfm_seed_2" / "results.json");
  // As after a failed attempt: the successful rerun removes the stale reason.
  { std::ofstream(runs / "cfm_seed_2" / "error.txt") << "an earlier failure\n"; }
  REQUIRE(train::run_sweep(o) == 0);
  for (auto& n : {"baseline_seed_1", "baseline_seed_2", "cfm_seed_1"})
    REQUIRE(fs::last_write_time(runs / n / "results.json") == stamps[n]);
  REQUIRE(fs::exists(runs / "cfm_seed_2" / "results.json"));
  CHECK_FALSE(fs::exists(runs / "cfm_seed_2" / "error.txt"));
  // Long-form CSV: one row per variant and metric, n = 2 seeds.
  std::ifstream csv(dir / "results.csv");
  std::string header, line;
  std::getline(csv, header);
  REQUIRE(header == "variant,metric,mean,std,n");
  bool found = false;
  while (std::getline(csv, line))
    if (line.rfind("\"cfm\",recall@20/tail,", 0) == 0) {
      found = true;
      REQUIRE(line.substr(line.size() - 2) == ",2");
    }
  REQUIRE(found);
  std::ifstream md(dir / "results.md");
  std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  REQUIRE(text.find("| cfm | 2 |") != std::string::npos);
  REQUIRE(text.find("paired by seed") != std::string::npos);
}

TEST_CASE("--only with an unknown variant names the known ones", "[sweep]") {
  auto sweep = config::load_file("configs/tests/ssl_sweep_tiny.json");
  REQUIRE_THROWS_WITH(train::expand_sweep(sweep, {"rfn"}), Catch::Contains("baseline, cfm"));
  REQUIRE(train::expand_sweep(sweep, {"cfm"}).size() == 2);
}

TEST_CASE("t quantiles for the paired intervals", "[sweep]") {
  testing::require_close(train::t_quantile_975(1), 12.706, 1e-9);
  testing::require_close(train::t_quantile_975(4), 2.776, 1e-9);
  REQUIRE(std::abs(train::t_quantile_975(100) - 1.984) < 0.005);
}
