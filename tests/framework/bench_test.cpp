#include "framework/bench/bench.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "framework/bench/workloads.h"
#include "framework/util/allocator.h"
#include "framework/util/blas.h"
#include "support.h"

using namespace recsys;
using namespace recsys::bench;

namespace {

BenchOptions tiny_options() {
  BenchOptions o;
  o.threads = 1;
  o.steps = 2;
  o.warmup = 1;
  o.fork = false;
  o.shapes = BenchShapes::tiny();
  return o;
}

void require_finite_positive(const nlohmann::json& r, const char* key) {
  INFO(r.dump() << " key " << key);
  REQUIRE(r.contains(key));
  double v = r[key].get<double>();
  REQUIRE(std::isfinite(v));
  REQUIRE(v > 0);
}

}  // namespace

TEST_CASE("bench: mlp_forward_flops counts 2 in out per layer and row", "[bench]") {
  // 3 -> 4 -> 2 over 5 rows: 2 * (3 * 4 + 4 * 2) * 5 = 200.
  REQUIRE(mlp_forward_flops(3, {4, 2}, 5) == Approx(200.0));
  REQUIRE(mlp_forward_flops(7, {}, 3) == 0.0);
}

TEST_CASE("bench: workload FLOP counts match hand counts at tiny shapes", "[bench]") {
  CtrShapes s;
  s.dim = 1;  // a behaviour is 2 wide
  s.max_len = 2;
  s.attention = {3};
  s.mlp = {2};
  s.gru_hidden = 1;
  s.aux = {2};
  // DIN: attention 8 -> 3 -> 1 at 2 positions: 2 * (24 + 3) * 2 = 108; output MLP 6 -> 2 -> 1:
  // 2 * (12 + 2) = 28. Forward + backward = 3 * 136.
  REQUIRE(din_flops_per_example(s) == Approx(408.0));
  // DIEN (I = 2, H = 1, T = 2): one GRU = 2 * (2 * (2 * 3) + 2 * (1 * 3)) = 36, two GRUs 72;
  // aux MLP 3 -> 2 -> 1 = 2 * (6 + 2) = 16, on T - 1 = 1 position for the positive and the
  // negative = 32; W e = 2 * 2 * 1 = 4 and the scores 2 * T * H = 4; output MLP 5 -> 2 -> 1 =
  // 2 * (10 + 2) = 24. Total 136, times 3.
  REQUIRE(dien_flops_per_example(s) == Approx(408.0));

  TwoTowerShapes t = BenchShapes::tiny().two_tower;  // dim 8, hidden {16, 8}, n 16, m 12
  auto w = make_twotower_ssl(t, torch::kCPU, 1);
  // Tower MLP per row: 2 * (32 * 16 + 16 * 8) = 1280; user rows 16, item rows 16 + 24 = 40;
  // logits 2 * 16 * 16 * 8 + 2 * 12 * 12 * 8 = 6400. Forward 1280 * 56 + 6400 = 78080,
  // times 3 over 16 examples.
  REQUIRE(w->flops_per_example() == Approx(3.0 * 78080.0 / 16.0));
}

TEST_CASE("bench: Zipf sampler follows (k + 1)^-1.1", "[bench]") {
  ZipfSampler z(5, 1.1);
  double h = 0;
  for (int k = 1; k <= 5; ++k) h += std::pow(k, -1.1);
  REQUIRE(z.log_prob(0) == Approx(-std::log(h)));
  REQUIRE(z.log_prob(4) == Approx(-1.1 * std::log(5.0) - std::log(h)));
  std::mt19937_64 rng(3);
  std::vector<int> counts(5, 0);
  const int n = 200000;
  int out_of_range = 0;
  for (int i = 0; i < n; ++i) {
    auto r = z(rng);
    if (r < 0 || r >= 5) {
      ++out_of_range;
      continue;
    }
    ++counts[static_cast<size_t>(r)];
  }
  REQUIRE(out_of_range == 0);
  for (int k = 0; k < 5; ++k)
    REQUIRE(counts[static_cast<size_t>(k)] / static_cast<double>(n) ==
            Approx(std::exp(z.log_prob(k))).margin(0.005));
}

TEST_CASE("bench: twotower_ssl runs at tiny shapes with finite positive figures", "[bench]") {
  auto r = run_workload("twotower_ssl", tiny_options());
  for (auto* key : {"examples_per_s", "step_ms_median", "param_mb", "optimizer_state_mb",
                    "batch_activation_mb_estimate", "flops_per_example", "final_loss"})
    require_finite_positive(r, key);
  REQUIRE(r["workload"] == "twotower_ssl");
  REQUIRE(r["threads"] == 1);
  REQUIRE(r["step_structure"] == "one graph");  // one thread: nothing to put side by side
  // Two threads: the towers side by side (train::run_staged), unless switched off.
  auto two = tiny_options();
  two.threads = 2;
  REQUIRE(run_workload("twotower_ssl", two)["step_structure"] ==
          (recsys::util::blas_calls_nest() ? "staged" : "one graph"));
  two.disable = {"parallel_branches"};
  REQUIRE(run_workload("twotower_ssl", two)["step_structure"] == "one graph");
  REQUIRE(r["optimizer_state_mb"].get<double>() == Approx(2 * r["param_mb"].get<double>()));
}

TEST_CASE("bench: din and dien run at tiny shapes with finite positive figures", "[bench]") {
  for (const char* name : {"din", "dien"}) {
    auto r = run_workload(name, tiny_options());
    for (auto* key : {"examples_per_s", "step_ms_median", "param_mb", "optimizer_state_mb",
                      "batch_activation_mb_estimate", "flops_per_example", "final_loss"})
      require_finite_positive(r, key);
    REQUIRE(r["workload"] == name);
  }
}

TEST_CASE("bench: every optimisation, switched off alone or all together, keeps the losses",
          "[bench]") {
  // Same seed: same parameters, batches and masks; the updates keep both runs in step. Each
  // optimised path must compute the function of its plain path (its oracle).
  const auto shapes = BenchShapes::tiny();
  std::vector<std::vector<std::string>> variants{optimisation_names()};
  for (const auto& o : optimisation_names()) variants.push_back({o});
  for (const auto& name : workload_names()) {
    for (const auto& off : variants) {
      INFO(name << " without " << off.size() << " optimisation(s), first " << off.front());
      auto fast = make_workload(name, shapes, torch::kCPU, 4);
      auto plain = make_workload(name, shapes, torch::kCPU, 4, off);
      // The process-wide switches (run_workload sets them) are off around the
      // plain workload's steps only.
      auto has = [&](const char* o) { return std::find(off.begin(), off.end(), o) != off.end(); };
      auto plain_step = [&] {
        for (const auto& sw : paired_switch_names()) set_process_switch(sw, !has(sw.c_str()));
        auto loss = plain->step();
        for (const auto& sw : paired_switch_names()) set_process_switch(sw, true);
        return loss;
      };
      for (int i = 0; i < 3; ++i) {
        double a = fast->step().item<double>(), b = plain_step().item<double>();
        REQUIRE(std::isfinite(a));
        REQUIRE(a == Approx(b).epsilon(1e-5));
      }
    }
  }
  REQUIRE_THROWS_WITH(make_workload("din", shapes, torch::kCPU, 4, {"nope"}),
                      Catch::Contains("unknown optimisation 'nope'"));
}

TEST_CASE("bench: training lowers the twotower_ssl loss on its batches", "[bench]") {
  auto s = BenchShapes::tiny().two_tower;
  auto w = make_twotower_ssl(s, torch::kCPU, 2);
  double first = 0, last = 0;
  for (int i = 0; i < 8; ++i) first += w->step().item<double>();
  for (int i = 0; i < 200; ++i) w->step();
  for (int i = 0; i < 8; ++i) last += w->step().item<double>();
  REQUIRE(last < first);
}

TEST_CASE("bench: unknown workloads and bad options are usage errors", "[bench]") {
  auto o = tiny_options();
  o.workloads = {"nope"};
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("known: twotower_ssl"));
  o.workloads = {"twotower_ssl"};
  o.threads = 0;
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("--threads"));
  o.threads = 1;
  o.disable = {"packing", "nope"};
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("unknown optimisation 'nope'"));
  o.disable.clear();
  o.pipeline_lines = 10;  // refused up front, not in a forked child
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("--pipeline-lines"));
  o.pipeline_lines = 2000;
  for (int scale : {0, -1, 65}) {
    o.batch_scale = scale;
    REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("--batch-scale must be in [1, 64], got " +
                                                      std::to_string(scale)));
  }
}

TEST_CASE("bench: --paired alternates a process-wide switch and reports the paired ratio",
          "[bench]") {
  auto o = tiny_options();
  o.steps = 6;
  o.paired = "onednn_gemm";
  auto r = run_workload("din", o);
  CHECK(r["paired"] == "onednn_gemm");
  for (const char* key : {"paired_on_ms_median", "paired_off_ms_median", "paired_ratio"})
    require_finite_positive(r, key);
  // The switch is left on after the run.
  CHECK(recsys::util::onednn_gemm_active() == recsys::util::has_onednn_gemm());
  CHECK(r["paired_mode"] == "process switch");
  // Known optimisations that can alternate, not switched off, over at least two steps.
  o.workloads = {"din"};
  o.paired = "packnig";
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("unknown optimisation 'packnig'"));
  o.paired = "allocator";
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("set once per process"));
  o.paired = "gemm";
  o.disable = {"gemm"};
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("switched off by --disable"));
  o.disable.clear();
  o.steps = 1;
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("--steps >= 2"));
}

TEST_CASE("bench: --paired with a workload path steps two workloads in turn", "[bench]") {
  auto o = tiny_options();
  o.steps = 6;
  for (const auto& [name, path] : {std::pair<std::string, std::string>{"twotower_ssl", "tower_mlp"},
                                   {"din", "packing"}}) {
    INFO(name << " " << path);
    o.paired = path;
    auto r = run_workload(name, o);
    CHECK(r["paired"] == path);
    CHECK(r["paired_mode"] == "two workloads");
    for (const char* key : {"paired_on_ms_median", "paired_off_ms_median", "paired_ratio"})
      require_finite_positive(r, key);
    // The reported loss is the workload's with the path on (a finite training loss).
    CHECK(std::isfinite(r["final_loss"].get<double>()));
  }
  // A path the workload does not have is not paired; through run_bench, a path none of the
  // selected workloads has is refused.
  o.paired = "packing";
  auto r = run_workload("twotower_ssl", o);
  CHECK(r["paired_mode"] == "not a path of this workload");
  CHECK_FALSE(r.contains("paired_ratio"));
  o.workloads = {"twotower_ssl"};
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("none of the selected workloads has the path 'packing'"));
  // A path switched off by --disable cannot be paired.
  o.workloads = {"din"};
  o.paired = "packing";
  o.disable = {"packing"};
  REQUIRE_THROWS_WITH(run_bench(o), Catch::Contains("switched off by --disable"));
}

TEST_CASE("bench: every optimisation is a workload path, a process-wide switch or set once",
          "[bench]") {
  std::set<std::string> covered(paired_switch_names().begin(), paired_switch_names().end());
  covered.insert({"allocator", "huge_pages"});
  for (const auto& w : workload_names())
    for (const auto& p : workload_paths(w)) covered.insert(p);
  const auto& all = optimisation_names();
  CHECK(covered == std::set<std::string>(all.begin(), all.end()));
  CHECK(workload_paths("pipeline").empty());
}

TEST_CASE("bench: --batch-scale multiplies every workload's batch and nothing else", "[bench]") {
  const auto base = BenchShapes::tiny();
  const auto s = base.with_batch_scale(3);
  CHECK(s.two_tower.batch == 3 * base.two_tower.batch);
  CHECK(s.two_tower.ssl_batch == 3 * base.two_tower.ssl_batch);
  CHECK(s.ctr.batch == 3 * base.ctr.batch);
  CHECK(s.ctr.dien_batch == 3 * base.ctr.dien_batch);
  CHECK(s.two_tower.items == base.two_tower.items);
  CHECK(s.two_tower.hidden == base.two_tower.hidden);
  CHECK(s.ctr.max_len == base.ctr.max_len);
  CHECK(s.ctr.attention == base.ctr.attention);
  for (const char* name : {"twotower_ssl", "din", "dien"}) {
    auto o = tiny_options();
    auto one = run_workload(name, o);
    o.batch_scale = 2;
    auto two = run_workload(name, o);
    INFO(name << " " << one.dump() << " " << two.dump());
    CHECK(one["batch_scale"] == 1);
    CHECK(two["batch_scale"] == 2);
    CHECK(two["batch"].get<int64_t>() == 2 * one["batch"].get<int64_t>());
    require_finite_positive(two, "examples_per_s");
    require_finite_positive(two, "final_loss");
    // The activations grow with the batch; the parameters do not.
    CHECK(two["param_mb"].get<double>() == one["param_mb"].get<double>());
    CHECK(two["batch_activation_mb_estimate"].get<double>() >
          one["batch_activation_mb_estimate"].get<double>());
  }
  // twotower_ssl's in-batch logits grow with the batch: more FLOPs per example at a larger batch.
  auto o = tiny_options();
  auto one = run_workload("twotower_ssl", o);
  o.batch_scale = 4;
  auto four = run_workload("twotower_ssl", o);
  CHECK(four["flops_per_example"].get<double>() > one["flops_per_example"].get<double>());
}

TEST_CASE("bench: the pipeline benchmark parses and batches a generated log", "[bench]") {
  auto o = tiny_options();
  o.pipeline_lines = 3000;
  auto r = run_pipeline(o, 1000.0);
  for (auto* key : {"parse_taobao_lines_per_s", "parse_csv_lines_per_s", "ctr_batches_per_s",
                    "ctr_examples_per_s", "retrieval_batches_per_s", "retrieval_examples_per_s",
                    "ctr_batching_over_training"})
    require_finite_positive(r, key);
  REQUIRE(r["ctr_examples_per_s"].get<double>() ==
          Approx(256 * r["ctr_batches_per_s"].get<double>()));
}

namespace {

/// Runs `env_prefix build/recsys bench ARGS --json` and returns its first JSON line (undefined
/// JSON when the binary is missing: the caller skips).
nlohmann::json bench_cli(const std::string& env_prefix, const std::string& args) {
  if (!std::filesystem::exists("build/recsys")) return nlohmann::json();
  auto out = recsys::testing::temp_dir("bench_cli") / "out.json";
  std::string cmd = env_prefix + " build/recsys bench " + args + " --json > " + out.string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(out);
  std::string line;
  REQUIRE(std::getline(in, line));
  return nlohmann::json::parse(line);
}

}  // namespace

TEST_CASE("bench: the recsys binary runs workloads in child processes", "[bench]") {
  auto r = bench_cli("", "--workloads pipeline --pipeline-lines 2000 --threads 1");
  if (r.is_null()) {
    WARN("build/recsys not found (run the tests from the repository root after building): skipped");
    return;
  }
  REQUIRE(r["workload"] == "pipeline");
  require_finite_positive(r, "peak_rss_mb");
  require_finite_positive(r, "parse_taobao_lines_per_s");
}

TEST_CASE("bench: the binary picks an OpenMP wait policy and reports memory against the model",
          "[bench]") {
  auto r = bench_cli("env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u RECSYS_OMP_CHOICE",
                     "--workloads din --steps 1 --threads 1");
  if (r.is_null()) {
    WARN("build/recsys not found (run the tests from the repository root after building): skipped");
    return;
  }
  const auto policy = r["omp_wait_policy"].get<std::string>();
  INFO(policy);
  CHECK((policy.rfind("spin 20000", 0) == 0 || policy.rfind("PASSIVE", 0) == 0));
  require_finite_positive(r, "rss_baseline_mb");
  require_finite_positive(r, "workload_rss_mb");
  require_finite_positive(r, "memory_ratio");
  // A policy the user set is kept and reported as such.
  auto kept = bench_cli("OMP_WAIT_POLICY=PASSIVE", "--workloads din --steps 1 --threads 1");
  CHECK(kept["omp_wait_policy"] == "PASSIVE");
  // An unknown optimisation is a usage error: exit status 2.
  const int status = std::system("build/recsys bench --workloads din --disable nope > /dev/null 2>&1");
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 2);
  CHECK(recsys::bench::other_busy_cores(20) >= -1);
}

TEST_CASE("bench: the binary starts malloc with huge pages unless told otherwise", "[bench]") {
  const std::string clean =
      "env -u GLIBC_TUNABLES -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_ -u RECSYS_HUGE_HEAP";
  auto on = bench_cli(clean, "--workloads din --steps 1 --threads 1");
  if (on.is_null()) {
    WARN("build/recsys not found (run the tests from the repository root after building): skipped");
    return;
  }
  // Where glibc.malloc.hugetlb can take effect (glibc 2.35+, transparent huge pages not off).
  const bool supported = recsys::util::huge_page_heap_supported();
  CHECK(on["huge_page_heap"] == supported);
  if (supported)
    CHECK_THAT(on["allocator"].get<std::string>(), Catch::Contains("glibc.malloc.hugetlb=1"));
  // Also when the wait policy is set (a re-execution for the heap alone).
  auto kept = bench_cli(clean + " OMP_WAIT_POLICY=PASSIVE", "--workloads din --steps 1 --threads 1");
  CHECK(kept["omp_wait_policy"] == "PASSIVE");
  CHECK(kept["huge_page_heap"] == supported);
  // RECSYS_HUGE_HEAP=0 opts out.
  auto opted_out = bench_cli(clean + " RECSYS_HUGE_HEAP=0", "--workloads din --steps 1 --threads 1");
  CHECK(opted_out["huge_page_heap"] == false);
  // Switched off, and never over the user's own malloc settings.
  auto off = bench_cli(clean, "--workloads din --steps 1 --threads 1 --disable huge_pages");
  CHECK(off["huge_page_heap"] == false);
  auto user = bench_cli(clean + " GLIBC_TUNABLES=glibc.malloc.arena_max=4",
                        "--workloads din --steps 1 --threads 1");
  CHECK(user["huge_page_heap"] == false);
  CHECK(user["allocator"] == "user settings (GLIBC_TUNABLES)");
}

TEST_CASE("bench --profile writes a Chrome trace of the timed steps", "[bench]") {
  auto dir = recsys::testing::temp_dir("bench_profile");
  auto o = tiny_options();
  o.profile = (dir / "trace").string();
  auto r = run_workload("din", o);
  REQUIRE(r["workload"] == "din");
  const auto path = dir / "trace.din.json";
  REQUIRE(std::filesystem::exists(path));
  std::ifstream in(path);
  auto trace = nlohmann::json::parse(in);  // throws on a malformed trace
  const auto& events = trace.is_array() ? trace : trace["traceEvents"];
  bool saw_mm = false;
  for (const auto& e : events)
    if (e.contains("name") && e["name"].is_string())
      saw_mm = saw_mm || e["name"].get<std::string>().find("mm") != std::string::npos;
  CHECK(saw_mm);  // the attention MLP's products were recorded
  CHECK(r["allocator"].get<std::string>().size() > 0);
}
