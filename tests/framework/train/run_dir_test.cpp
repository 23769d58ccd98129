// The run directory's file writing.
#include <fstream>

#include "framework/train/run_dir.h"
#include "support.h"

namespace fs = std::filesystem;

TEST_CASE("write_atomic replaces a file whole and leaves nothing behind when it fails", "[train]") {
  auto dir = recsys::testing::temp_dir("write_atomic");
  recsys::train::write_atomic(dir / "a.json", "first\n");
  recsys::train::write_atomic(dir / "a.json", "second\n");
  std::ifstream in(dir / "a.json");
  std::string line;
  std::getline(in, line);
  CHECK(line == "second");
  // The target is a non-empty directory: the rename fails after the temporary file was written.
  fs::create_directories(dir / "taken" / "inside");
  CHECK_THROWS(recsys::train::write_atomic(dir / "taken", "x\n"));
  CHECK(fs::is_directory(dir / "taken" / "inside"));
  int leftovers = 0;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp") != std::string::npos) ++leftovers;
  CHECK(leftovers == 0);
}

TEST_CASE("truncate_metrics keeps the records up to a step and drops test records", "[train]") {
  auto dir = recsys::testing::temp_dir("truncate_metrics");
  recsys::train::RunDir run(dir / "run");
  run.append_metrics({{"step", 4}, {"split", "valid"}});
  run.append_metrics({{"step", 8}, {"split", "valid"}});
  run.append_metrics({{"step", 12}, {"split", "valid"}});
  run.append_metrics({{"step", 8}, {"split", "test"}});
  { std::ofstream(dir / "run" / "metrics.jsonl", std::ios::app) << "{\"step\": 16, \"spl"; }  // cut short
  run.truncate_metrics(8);
  std::ifstream in(dir / "run" / "metrics.jsonl");
  std::vector<nlohmann::json> kept;
  for (std::string line; std::getline(in, line);) kept.push_back(nlohmann::json::parse(line));
  REQUIRE(kept.size() == 2);
  CHECK(kept[0]["step"] == 4);
  CHECK(kept[1]["step"] == 8);
  CHECK(kept[1]["split"] == "valid");
}
