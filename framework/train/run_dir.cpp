#include "framework/train/run_dir.h"

#include <fstream>
#include <stdexcept>

#include <unistd.h>

namespace recsys::train {
namespace fs = std::filesystem;

void write_atomic(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += ".tmp" + std::to_string(::getpid());
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) throw std::runtime_error("cannot write " + tmp.string());
      out << text;
      out.flush();
      if (!out) throw std::runtime_error("failed writing " + tmp.string());
    }
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);  // the target is untouched; leave no half-written file beside it
    throw;
  }
}

RunDir::RunDir(fs::path dir) : dir_(std::move(dir)) {
  fs::create_directories(dir_ / "checkpoints");
}

void RunDir::write_config(const nlohmann::json& config) const {
  if (enabled()) write_atomic(dir_ / "config.json", config.dump(2) + "\n");
}

void RunDir::append_metrics(const nlohmann::json& record) const {
  if (!enabled()) return;
  std::ofstream out(dir_ / "metrics.jsonl", std::ios::app);
  out << record.dump() << "\n";
}

void RunDir::reset_metrics() const {
  if (enabled()) std::ofstream(dir_ / "metrics.jsonl", std::ios::trunc);
}

void RunDir::truncate_metrics(int64_t step) const {
  if (!enabled() || !fs::exists(dir_ / "metrics.jsonl")) return;
  std::ifstream in(dir_ / "metrics.jsonl");
  std::string kept, line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      break;  // a line cut short by the interruption: nothing after it is kept
    }
    if (record.value("split", "") == "test" || record.value("step", int64_t{0}) > step) continue;
    kept += line + "\n";
  }
  write_atomic(dir_ / "metrics.jsonl", kept);
}

bool RunDir::holds_run(const fs::path& dir) {
  if (dir.empty()) return false;
  if (fs::exists(dir / "results.json")) return true;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir / "checkpoints", ec))
    if (e.path().extension() == ".pt") return true;
  return false;
}

void RunDir::write_results(const nlohmann::json& results) const {
  if (enabled()) write_atomic(dir_ / "results.json", results.dump(2) + "\n");
}

}  // namespace recsys::train
