// The data-pipeline benchmark: parse a generated Taobao-format log, build CTR and retrieval
// batches, and compare their rates with the training throughput.
#include <time.h>
#include <torch/version.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "framework/bench/bench.h"
#include "framework/data/ctr_data.h"
#include "framework/data/schema.h"

namespace recsys::bench {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// CPU seconds of the calling thread: on a shared, loaded machine the wall time of a
/// single-threaded loop mostly measures the other processes; this does not.
double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Writes `lines` behaviours in the Taobao UserBehavior format: about 100 per user, items
/// Zipf(1.1) over 100,000 raw ids, category = item mod 1000 + 1, mostly "pv".
void write_taobao_log(const fs::path& path, int64_t lines, uint64_t seed) {
  std::mt19937_64 rng(seed);
  ZipfSampler zipf(100000, 1.1);
  const int64_t users = std::max<int64_t>(1, lines / 100);
  std::uniform_int_distribution<int64_t> user(1, users);
  std::uniform_int_distribution<int> kind(0, 99);
  static const char* const kinds[] = {"pv", "cart", "fav", "buy"};
  std::string buf;
  buf.reserve(1 << 20);
  std::ofstream out(path, std::ios::binary);
  int64_t time = 1511544070;
  char line[128];
  for (int64_t i = 0; i < lines; ++i) {
    int64_t item = 1000000 + zipf(rng) * 37;
    int k = kind(rng);
    const char* b = kinds[k < 89 ? 0 : k < 95 ? 1 : k < 98 ? 2 : 3];
    time += static_cast<int64_t>(rng() % 3);
    int len =
        std::snprintf(line, sizeof line, "%lld,%lld,%lld,%s,%lld\n",
                      static_cast<long long>(user(rng)), static_cast<long long>(item),
                      static_cast<long long>(item % 1000 + 1), b, static_cast<long long>(time));
    buf.append(line, static_cast<size_t>(len));
    if (buf.size() > (1 << 20) - 128) {
      out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
      buf.clear();
    }
  }
  out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
}

}  // namespace

nlohmann::json run_pipeline(const BenchOptions& options, double fastest_examples_per_s) {
  torch::set_num_threads(1);
  const int64_t lines = options.pipeline_lines;
  TORCH_CHECK(lines >= 100, "bench pipeline: needs at least 100 lines, got ", lines);
  auto dir = fs::temp_directory_path() / ("recsys_bench_" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto path = dir / "taobao.csv";
  nlohmann::json r;
  r["workload"] = "pipeline";
  r["lines"] = lines;
  r["threads"] = 1;
  r["device"] = "cpu";
  r["torch"] = TORCH_VERSION;
  try {
    write_taobao_log(path, lines, 7);
    r["file_mb"] = static_cast<double>(fs::file_size(path)) / (1024.0 * 1024.0);

    // Parsing: the better of two runs (the first one also warms the page cache).
    double taobao_s = 1e30, csv_s = 1e30, taobao_cpu = 1e30, csv_cpu = 1e30;
    data::InteractionLog log;
    for (int rep = 0; rep < 2; ++rep) {
      auto t0 = Clock::now();
      double c0 = thread_cpu_s();
      log = data::load_taobao(path.string());
      taobao_cpu = std::min(taobao_cpu, thread_cpu_s() - c0);
      taobao_s = std::min(taobao_s, seconds_since(t0));
    }
    TORCH_CHECK(log.num_interactions() == lines, "bench pipeline: parsed ", log.num_interactions(),
                " of ", lines, " lines");
    data::CsvOptions csv;
    csv.path = path.string();
    csv.header = false;
    csv.user = "0";
    csv.item = "1";
    csv.category = "2";
    csv.timestamp = "4";
    for (int rep = 0; rep < 2; ++rep) {
      auto t0 = Clock::now();
      double c0 = thread_cpu_s();
      auto l = data::load_interactions_csv(csv);
      csv_cpu = std::min(csv_cpu, thread_cpu_s() - c0);
      csv_s = std::min(csv_s, seconds_since(t0));
    }
    r["parse_taobao_lines_per_s"] = static_cast<double>(lines) / taobao_s;
    r["parse_csv_lines_per_s"] = static_cast<double>(lines) / csv_s;
    r["parse_taobao_lines_per_cpu_s"] = static_cast<double>(lines) / taobao_cpu;
    r["parse_csv_lines_per_cpu_s"] = static_cast<double>(lines) / csv_cpu;

    // CTR batches of 256 rows (histories up to 50), random rows of the training samples.
    data::CtrSampleOptions so;
    so.max_history = 50;
    auto t0 = Clock::now();
    auto splits = data::build_ctr_samples(log, so);
    r["build_samples_s"] = seconds_since(t0);
    std::mt19937_64 rng(3);
    const int64_t rows = 256;
    std::uniform_int_distribution<int64_t> pick(0, splits.train.size() - 1);
    std::vector<int64_t> idx(static_cast<size_t>(rows));
    int64_t batches = 0;
    t0 = Clock::now();
    double c0 = thread_cpu_s();
    double elapsed = 0;
    while (elapsed < 1.0 || batches < 20) {
      for (auto& i : idx) i = pick(rng);
      auto b = data::make_ctr_batch(log, splits.train, idx, 50);
      ++batches;
      elapsed = seconds_since(t0);
    }
    r["ctr_batches_per_s"] = static_cast<double>(batches) / elapsed;
    r["ctr_examples_per_s"] = static_cast<double>(batches * rows) / elapsed;
    r["ctr_examples_per_cpu_s"] = static_cast<double>(batches * rows) / (thread_cpu_s() - c0);

    // Retrieval batches: the twotower_ssl item features (4 columns) gathered for 1,024 rows.
    const int64_t n_items = 200000, n = 1024;
    data::FeatureTable items(n_items);
    std::vector<std::vector<int64_t>> id(n_items), cats(n_items), kws(n_items), city(n_items);
    std::uniform_int_distribution<int64_t> u(2, 999);
    for (int64_t i = 0; i < n_items; ++i) {
      id[i] = {i + 2};
      cats[i] = {u(rng), u(rng), u(rng)};
      kws[i] = {u(rng) * 10, u(rng) * 10, u(rng) * 10, u(rng) * 10, u(rng) * 10};
      city[i] = {u(rng) % 500 + 2};
    }
    items.add_categorical({"item_id", data::FeatureKind::kSingle, n_items + 2, 1}, id);
    items.add_categorical({"categories", data::FeatureKind::kMulti, 1002, 3}, cats);
    items.add_categorical({"keywords", data::FeatureKind::kMulti, 10002, 5}, kws);
    items.add_categorical({"city", data::FeatureKind::kSingle, 502, 1}, city);
    std::uniform_int_distribution<int64_t> pick_item(0, n_items - 1);
    std::vector<int64_t> ridx(static_cast<size_t>(n));
    batches = 0;
    t0 = Clock::now();
    c0 = thread_cpu_s();
    elapsed = 0;
    while (elapsed < 1.0 || batches < 20) {
      for (auto& i : ridx) i = pick_item(rng);
      auto b = items.gather(ridx.data(), n);
      ++batches;
      elapsed = seconds_since(t0);
    }
    r["retrieval_batches_per_s"] = static_cast<double>(batches) / elapsed;
    r["retrieval_examples_per_s"] = static_cast<double>(batches * n) / elapsed;
    r["retrieval_examples_per_cpu_s"] = static_cast<double>(batches * n) / (thread_cpu_s() - c0);
    if (fastest_examples_per_s > 0) {
      r["fastest_workload_examples_per_s"] = fastest_examples_per_s;
      r["ctr_batching_over_training"] =
          r["ctr_examples_per_s"].get<double>() / fastest_examples_per_s;
      r["retrieval_batching_over_training"] =
          r["retrieval_examples_per_s"].get<double>() / fastest_examples_per_s;
    }
  } catch (...) {
    fs::remove_all(dir);
    throw;
  }
  fs::remove_all(dir);
  return r;
}

}  // namespace recsys::bench
