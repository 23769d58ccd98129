#include "framework/bench/bench.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/cuda.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>

#include "framework/bench/workloads.h"
#include "framework/train/optimizer.h"
#include "framework/util/allocator.h"
#include "framework/util/blas.h"
#include "framework/util/errors.h"
#include "framework/util/matmul.h"
#include "framework/util/share.h"
#include "models/layers/gru.h"

namespace recsys::bench {

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void sync(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda") {
    if (!torch::cuda::is_available())
      throw UsageError("--device cuda: this LibTorch build sees no CUDA device (use --device cpu)");
    return torch::Device(torch::kCUDA, 0);
  }
  throw UsageError("--device must be cpu or cuda, got '" + name + "'");
}

constexpr double kMiB = 1024.0 * 1024.0;
// Largest --batch-scale: twotower_ssl's SSL logits grow with its square (64: 65,536 x 65,536,
// 16 GiB in float32, the size of one accelerator's share of memory).
constexpr int kMaxBatchScale = 64;

/// A "VmXXX:" line of /proc/self/status in MiB (0 when unavailable).
double proc_status_mb(const char* key) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  const size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, key, n) == 0) {
      kb = std::atof(line + n);
      break;
    }
  std::fclose(f);
  return kb / 1024.0;
}

double process_cpu_s() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

}  // namespace

void Workload::begin_step() { phase_start_ = Clock::now(); }

void Workload::end_phase(int i) {
  auto now = Clock::now();
  phase_ms_[static_cast<size_t>(i)] =
      std::chrono::duration<double, std::milli>(now - phase_start_).count();
  phase_start_ = now;
}

torch::Tensor Workload::finish_step(const torch::Tensor& loss, train::Optimizer& optimizer) {
  end_phase(0);
  loss.backward();
  end_phase(1);
  optimizer.step();
  end_phase(2);
  return loss.detach();
}

BenchShapes BenchShapes::tiny() {
  BenchShapes s;
  auto& t = s.two_tower;
  t.users = 50;
  t.items = 80;
  t.dim = 8;
  t.history = 4;
  t.categories = 20;
  t.keywords = 30;
  t.cities = 7;
  t.hidden = {16, 8};
  t.batch = 16;
  t.ssl_batch = 12;
  auto& c = s.ctr;
  c.items = 60;
  c.categories = 9;
  c.dim = 4;
  c.batch = 8;
  c.dien_batch = 6;
  c.max_len = 7;
  c.min_len = 2;
  c.attention = {6, 4};
  c.mlp = {10, 5};
  c.gru_hidden = 5;
  c.aux = {6, 3};
  return s;
}

BenchShapes BenchShapes::with_batch_scale(int64_t factor) const {
  BenchShapes s = *this;
  s.two_tower.batch *= factor;
  s.two_tower.ssl_batch *= factor;
  s.ctr.batch *= factor;
  s.ctr.dien_batch *= factor;
  return s;
}

const std::vector<std::string>& workload_names() {
  static const std::vector<std::string> names = {"twotower_ssl", "din", "dien"};
  return names;
}

const std::vector<std::string>& optimisation_names() {
  static const std::vector<std::string> names = {"optimizer", "cross_entropy", "item_tower_batch",
                                                 "first_layer", "packing", "gru_packed",
                                                 "gru_fused", "dice", "aux_fused",
                                                 "small_vocab_projection", "allocator",
                                                 "gemm", "gru_threads", "softmax_fused",
                                                 "sparse_lookup", "distinct_bags",
                                                 "tower_mlp", "attention_tail",
                                                 "huge_pages", "distinct_items",
                                                 "onednn_gemm", "padded_rows",
                                                 "parallel_branches", "work_sharing"};
  return names;
}

namespace {

std::string join(const std::vector<std::string>& names) {
  std::string list;
  for (const auto& k : names) list += (list.empty() ? "" : ", ") + k;
  return list;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

std::string optimisation_list() { return join(optimisation_names()); }

namespace {

void check_optimisation_names(const std::vector<std::string>& names) {
  const auto& known = optimisation_names();
  for (const auto& d : names)
    if (!contains(known, d))
      throw UsageError("--disable: unknown optimisation '" + d + "' (known: " +
                       optimisation_list() + ")");
}

}  // namespace

const std::vector<std::string>& paired_switch_names() {
  static const std::vector<std::string> names = {"gemm", "onednn_gemm", "gru_threads",
                                                       "padded_rows", "work_sharing"};
  return names;
}

std::string paired_switch_list() { return join(paired_switch_names()); }

bool is_process_switch(const std::string& name) {
  return contains(paired_switch_names(), name);
}

const std::vector<std::string>& unpairable_names() {
  static const std::vector<std::string> names = {"allocator", "huge_pages"};
  return names;
}

void set_process_switch(const std::string& name, bool on) {
  if (name == "gemm") util::set_parallel_gemm(on);
  else if (name == "onednn_gemm") util::set_onednn_gemm(on);
  else if (name == "gru_threads") models::set_gru_recurrence_threads(on);
  else if (name == "padded_rows") util::set_padded_rows(on);
  else if (name == "work_sharing") util::set_work_sharing(on);
  else throw UsageError("'" + name + "' is not a process-wide optimisation");
}

const std::vector<std::string>& workload_paths(const std::string& name) {
  static const std::vector<std::string> twotower = {
      "item_tower_batch", "cross_entropy", "softmax_fused",  "optimizer",
      "small_vocab_projection", "sparse_lookup", "distinct_bags", "tower_mlp",
      "distinct_items", "parallel_branches"};
  static const std::vector<std::string> din = {"optimizer", "dice", "packing", "first_layer",
                                               "attention_tail"};
  static const std::vector<std::string> dien = {"optimizer", "dice",       "packing",
                                                "gru_fused", "gru_packed", "aux_fused"};
  static const std::vector<std::string> none;
  return name == "twotower_ssl" ? twotower : name == "din" ? din : name == "dien" ? dien : none;
}

std::unique_ptr<Workload> make_workload(const std::string& name, const BenchShapes& shapes,
                                        torch::Device device, uint64_t seed,
                                        const std::vector<std::string>& disabled) {
  const auto& paths = workload_paths(name);
  auto on = [&](const char* o) {
    // workload_paths() lists every path read here (what --paired relies on).
    TORCH_CHECK(contains(paths, o), "bench: '", o, "' is read by ", name,
                " but missing from workload_paths");
    return !contains(disabled, o);
  };
  check_optimisation_names(disabled);
  if (name == "twotower_ssl") {
    TwoTowerPaths p;
    p.batched_item_tower = on("item_tower_batch");
    p.cross_entropy_kernel = on("cross_entropy");
    p.fused_softmax_mean = on("softmax_fused");
    p.fused_optimizer = on("optimizer");
    p.project_small_vocabularies = on("small_vocab_projection");
    p.fused_lookup = on("sparse_lookup");
    p.distinct_bags = on("distinct_bags");
    p.fused_mlp = on("tower_mlp");
    p.distinct_items = on("distinct_items");
    p.parallel_branches = on("parallel_branches");
    return make_twotower_ssl(shapes.two_tower, device, seed, p);
  }
  CtrPaths p;
  p.fused_optimizer = on("optimizer");
  p.fused_dice = on("dice");
  p.packed_model = on("packing");
  if (name == "din") {
    p.fused = on("first_layer");
    p.fused_attention_tail = on("attention_tail");
    return make_din(shapes.ctr, device, seed, p);
  }
  if (name == "dien") {
    p.fused = on("gru_fused");
    p.packed_gru = on("gru_packed");
    p.fused_aux = on("aux_fused");
    return make_dien(shapes.ctr, device, seed, p);
  }
  throw UsageError("unknown workload '" + name + "' (known: twotower_ssl, din, dien, pipeline)");
}

ZipfSampler::ZipfSampler(int64_t n, double exponent) : exponent_(exponent) {
  TORCH_CHECK(n >= 1, "ZipfSampler: needs at least one rank, got ", n);
  cdf_.resize(static_cast<size_t>(n));
  double total = 0;
  for (int64_t k = 0; k < n; ++k) {
    total += std::pow(static_cast<double>(k + 1), -exponent);
    cdf_[static_cast<size_t>(k)] = total;
  }
  for (auto& c : cdf_) c /= total;
  log_norm_ = std::log(total);
}

int64_t ZipfSampler::operator()(std::mt19937_64& rng) const {
  double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  auto it = std::lower_bound(cdf_.begin(), cdf_.end(), u);
  if (it == cdf_.end()) --it;
  return static_cast<int64_t>(it - cdf_.begin());
}

double ZipfSampler::log_prob(int64_t rank) const {
  return -exponent_ * std::log(static_cast<double>(rank + 1)) - log_norm_;
}

double mlp_forward_flops(int64_t in_dim, const std::vector<int64_t>& hidden, double rows) {
  double flops = 0;
  int64_t in = in_dim;
  for (auto out : hidden) {
    flops += 2.0 * static_cast<double>(in) * static_cast<double>(out) * rows;
    in = out;
  }
  return flops;
}

double tensor_bytes(const std::vector<torch::Tensor>& tensors) {
  double b = 0;
  for (auto& t : tensors)
    if (t.defined()) b += static_cast<double>(t.numel()) * static_cast<double>(t.element_size());
  return b;
}

double measure_matmul_gflops(int64_t n, int repeats) {
  torch::NoGradGuard no_grad;
  auto a = torch::randn({n, n});
  auto b = torch::randn({n, n});
  auto c = torch::empty({n, n});
  for (int i = 0; i < 3; ++i) torch::mm_out(c, a, b);
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = Clock::now();
    torch::mm_out(c, a, b);
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) /
         median(times) / 1e9;
}

nlohmann::json run_workload(const std::string& name, const BenchOptions& options) {
  // The process before the workload allocates anything: LibTorch, OpenBLAS and the framework's
  // code and static data, with the thread pools and OpenBLAS's per-thread work buffers started
  // by one product at the bench's thread count (fixed costs of any LibTorch process, about 10
  // MB at 2 threads), and the code of the workload's operators paged in by two steps of the
  // same workload at the tiny test shapes (LibTorch's library pages count in RSS: about 14 MB
  // of them are first touched by a training step, whatever its size). What the workload adds
  // is measured against its own sizes.
  torch::set_num_threads(options.threads);
  {
    torch::NoGradGuard no_grad;
    auto a = torch::ones({512, 512});
    (void)torch::mm(a, a).sum().item<float>();
  }
  const auto& disabled_list = options.plain ? optimisation_names() : options.disable;
  auto on = [&](const char* o) {
    return !contains(disabled_list, o);
  };
  // The process-wide optimisations (the others are options of the workload's models).
  if (on("allocator")) util::retain_freed_memory();
  util::set_huge_pages(on("huge_pages"));
  for (const auto& sw : paired_switch_names()) set_process_switch(sw, on(sw.c_str()));
  auto device = parse_device(options.device);
  {
    auto tiny = make_workload(name, BenchShapes::tiny(), device, 1, disabled_list);
    for (int i = 0; i < 2; ++i) tiny->step();
    sync(device);
  }
  const double rss_baseline = proc_status_mb("VmRSS:");
  const double file_baseline = proc_status_mb("RssFile:");
  auto workload = make_workload(name, options.shapes.with_batch_scale(options.batch_scale), device,
                                1, disabled_list);
  TORCH_CHECK(options.steps >= 1, "bench: --steps must be >= 1");
  // A paired workload path: a second workload from the same seed without it, stepped in turn
  // with the first (memory figures then include both). A path this workload does not have is
  // not paired (the two would be the same model).
  const bool paired_path = !is_process_switch(options.paired) &&
                           contains(workload_paths(name), options.paired);
  const bool paired = is_process_switch(options.paired) || paired_path;
  std::unique_ptr<Workload> without;
  if (paired_path) {
    auto off = disabled_list;
    off.push_back(options.paired);
    without = make_workload(name, options.shapes.with_batch_scale(options.batch_scale), device, 1, off);
  }
  for (int i = 0; i < options.warmup; ++i) {
    workload->step();
    if (without) without->step();
  }
  sync(device);
  std::vector<double> ms;
  std::array<std::vector<double>, 3> phases;
  ms.reserve(static_cast<size_t>(options.steps));
  torch::Tensor loss;
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  if (!options.profile.empty())
    profile = std::make_unique<torch::autograd::profiler::RecordProfile>(options.profile + "." +
                                                                         name + ".json");
  const double cpu0 = process_cpu_s();
  std::vector<double> on_ms, off_ms;
  for (int i = 0; i < options.steps; ++i) {
    const bool on = !paired || i % 2 == 0;
    if (paired && !paired_path) set_process_switch(options.paired, on);
    Workload& w = paired_path && !on ? *without : *workload;
    auto t0 = Clock::now();
    auto step_loss = w.step();
    sync(device);
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (&w == workload.get()) loss = step_loss;
    if (paired) (on ? on_ms : off_ms).push_back(ms.back());
    for (size_t p = 0; p < 3; ++p) phases[p].push_back(w.phase_ms()[p]);
  }
  profile.reset();  // writes the trace
  if (paired && !paired_path) set_process_switch(options.paired, true);
  const double cpu_ms = 1000.0 * (process_cpu_s() - cpu0) / options.steps;
  double step_ms = median(ms);
  nlohmann::json r;
  r["workload"] = name;
  r["examples_per_s"] = static_cast<double>(workload->examples_per_step()) / (step_ms / 1000.0);
  r["step_ms_median"] = step_ms;
  // CPU time (all threads, user + system) per step: on a shared machine the wall time includes
  // waiting for the cores; this measures the work (idle OpenMP threads sleep when PASSIVE).
  r["cpu_ms_per_step"] = cpu_ms;
  r["examples_per_cpu_s"] = static_cast<double>(workload->examples_per_step()) / (cpu_ms / 1000.0);
  r["batch"] = workload->examples_per_step();
  r["batch_scale"] = options.batch_scale;
  r["threads"] = options.threads;
  r["device"] = options.device;
  r["torch"] = TORCH_VERSION;
  std::string disabled;
  for (const auto& d : options.plain ? optimisation_names() : options.disable)
    disabled += (disabled.empty() ? "" : ",") + d;
  r["path"] = options.plain ? "plain" : disabled.empty() ? "optimised" : "optimised without " + disabled;
  r["disabled"] = disabled;
  if (paired) {
    // On-step j ran between off-steps j - 1 and j: its ratio to their mean (one neighbour at
    // the start).
    std::vector<double> ratios;
    for (size_t j = 0; j < on_ms.size() && j < off_ms.size(); ++j) {
      const double off = j == 0 ? off_ms[0] : 0.5 * (off_ms[j - 1] + off_ms[j]);
      ratios.push_back(on_ms[j] / off);
    }
    r["paired"] = options.paired;
    r["paired_mode"] = paired_path ? "two workloads" : "process switch";
    r["paired_on_ms_median"] = median(on_ms);
    r["paired_off_ms_median"] = median(off_ms);
    r["paired_ratio"] = median(ratios);
  } else if (!options.paired.empty()) {
    r["paired"] = options.paired;
    r["paired_mode"] = "not a path of this workload";
  }
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  const char* choice = std::getenv("RECSYS_OMP_CHOICE");
  r["omp_wait_policy"] = choice  ? std::string(choice)
                         : wait  ? std::string(wait)
                         : spin  ? "GOMP_SPINCOUNT=" + std::string(spin)
                                 : std::string("unset");
  r["allocator"] = util::allocator_policy();
  r["gemm"] = util::onednn_gemm_active() ? "onednn sgemm where faster, else BLAS" : "BLAS";
  // Memory in 2 MiB pages: parameters and optimizer state (train::Optimizer,
  // util::prefer_huge_pages) and, with huge_page_heap, malloc's heap.
  r["huge_pages_mb"] = util::huge_pages_mb();
  r["huge_page_heap"] = util::huge_page_heap();
  r["peak_rss_mb"] = proc_status_mb("VmHWM:");  // replaced by the parent's wait4 figure in a child
  r["rss_baseline_mb"] = rss_baseline;
  // Library pages first touched by the workload itself (part of workload_rss_mb).
  r["rss_file_growth_mb"] = proc_status_mb("RssFile:") - file_baseline;
  r["param_mb"] = workload->param_bytes() / kMiB;
  r["optimizer_state_mb"] = workload->optimizer_state_bytes() / kMiB;
  r["batch_activation_mb_estimate"] = workload->activation_bytes_estimate() / kMiB;
  r["flops_per_example"] = workload->flops_per_example();
  r["final_loss"] = loss.item<double>();
  // Phase medians (on an accelerator without a sync between phases: indicative only).
  r["forward_ms_median"] = median(phases[0]);
  r["backward_ms_median"] = median(phases[1]);
  r["optimizer_ms_median"] = median(phases[2]);
  r["step_structure"] = workload->step_structure();
  return r;
}

namespace {

void add_bound(nlohmann::json& r, double gflops) {
  if (!r.contains("flops_per_example") || gflops <= 0) return;
  double bound = gflops * 1e9 / r["flops_per_example"].get<double>();
  r["peak_gflops"] = gflops;
  r["flop_bound_examples_per_s"] = bound;
  r["flop_bound_fraction"] = r["examples_per_s"].get<double>() / bound;
}

/// workload_rss_mb: peak RSS above the process baseline; memory_ratio: that over parameters +
/// optimizer state + one batch's activations (the budget of WORKLOADS.md is 1.5).
void add_memory_ratio(nlohmann::json& r) {
  if (!r.contains("rss_baseline_mb") || !r.contains("param_mb") || !r["peak_rss_mb"].is_number())
    return;
  // Two workloads in one process (--paired with a workload path): the peak holds both, the
  // budget one; no ratio.
  if (r.value("paired_mode", "") == "two workloads") return;
  const double above = r["peak_rss_mb"].get<double>() - r["rss_baseline_mb"].get<double>();
  const double model = r["param_mb"].get<double>() + r["optimizer_state_mb"].get<double>() +
                       r["batch_activation_mb_estimate"].get<double>();
  r["workload_rss_mb"] = above;
  r["memory_ratio"] = above / model;
}

/// Runs `fn` in a forked child that writes one JSON document to a pipe; returns it with the
/// child's own peak RSS (wait4 reports the rusage of that child alone, whereas
/// getrusage(RUSAGE_CHILDREN) would give the largest of all children so far).
template <class Fn>
nlohmann::json in_child(const std::string& name, Fn fn) {
  int fds[2];
  if (pipe(fds) != 0)
    throw std::runtime_error("bench: pipe() failed: " + std::string(std::strerror(errno)));
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid < 0)
    throw std::runtime_error("bench: fork() failed: " + std::string(std::strerror(errno)));
  if (pid == 0) {
    close(fds[0]);
    std::string out;
    int code = 0;
    try {
      out = fn().dump();
    } catch (const std::exception& e) {
      out = nlohmann::json{{"workload", name}, {"error", e.what()}}.dump();
      code = 1;
    }
    out += "\n";
    size_t off = 0;
    while (off < out.size()) {
      ssize_t w = write(fds[1], out.data() + off, out.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    close(fds[1]);
    _exit(code);
  }
  close(fds[1]);
  std::string text;
  char buf[4096];
  ssize_t got;
  while ((got = read(fds[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(got));
  close(fds[0]);
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  nlohmann::json r;
  try {
    r = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    r = {{"workload", name},
         {"error", "child exited with status " + std::to_string(status) + " without a result"}};
  }
  r["peak_rss_mb"] = static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
  add_memory_ratio(r);
  return r;
}

std::string fmt(const nlohmann::json& r, const char* key, const char* f) {
  if (!r.contains(key) || !r[key].is_number()) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, r[key].get<double>());
  return buf;
}

void print_table(const std::vector<nlohmann::json>& rows, bool peak) {
  std::printf("%-13s %7s %12s %9s %7s %9s %9s %9s %9s %9s %9s", "workload", "batch", "examples/s",
              "step ms", "threads", "RSS MB", "+RSS MB", "param MB", "optim MB", "act MB", "mem ratio");
  if (peak) std::printf(" %10s %9s %9s", "MFLOP/ex", "bound/s", "fraction");
  std::printf("\n");
  for (auto& r : rows) {
    if (r.contains("error")) {
      std::printf("%-13s error: %s\n", r["workload"].get<std::string>().c_str(),
                  r["error"].get<std::string>().c_str());
      continue;
    }
    if (r["workload"] == "pipeline") continue;
    double mflop = r.contains("flops_per_example") ? r["flops_per_example"].get<double>() / 1e6 : 0;
    std::printf("%-13s %7s %12s %9s %7d %9s %9s %9s %9s %9s %9s",
                r["workload"].get<std::string>().c_str(), fmt(r, "batch", "%.0f").c_str(),
                fmt(r, "examples_per_s", "%.0f").c_str(),
                fmt(r, "step_ms_median", "%.2f").c_str(), r["threads"].get<int>(),
                fmt(r, "peak_rss_mb", "%.0f").c_str(), fmt(r, "workload_rss_mb", "%.0f").c_str(),
                fmt(r, "param_mb", "%.1f").c_str(), fmt(r, "optimizer_state_mb", "%.1f").c_str(),
                fmt(r, "batch_activation_mb_estimate", "%.1f").c_str(),
                fmt(r, "memory_ratio", "%.2f").c_str());
    if (peak)
      std::printf(" %10.2f %9s %9s", mflop, fmt(r, "flop_bound_examples_per_s", "%.0f").c_str(),
                  fmt(r, "flop_bound_fraction", "%.3f").c_str());
    std::printf("\n");
  }
  for (auto& r : rows) {
    if (r["workload"] != "pipeline" || r.contains("error")) continue;
    std::printf("\npipeline (%s lines, one core):\n", fmt(r, "lines", "%.0f").c_str());
    std::printf("  parse load_taobao           %12s lines/s (%s per CPU second)\n",
                fmt(r, "parse_taobao_lines_per_s", "%.0f").c_str(),
                fmt(r, "parse_taobao_lines_per_cpu_s", "%.0f").c_str());
    std::printf("  parse load_interactions_csv %12s lines/s (%s per CPU second)\n",
                fmt(r, "parse_csv_lines_per_s", "%.0f").c_str(),
                fmt(r, "parse_csv_lines_per_cpu_s", "%.0f").c_str());
    std::printf("  make_ctr_batch (256 rows)   %12s batches/s %12s examples/s\n",
                fmt(r, "ctr_batches_per_s", "%.0f").c_str(),
                fmt(r, "ctr_examples_per_s", "%.0f").c_str());
    std::printf("  retrieval gather (1024)     %12s batches/s %12s examples/s\n",
                fmt(r, "retrieval_batches_per_s", "%.0f").c_str(),
                fmt(r, "retrieval_examples_per_s", "%.0f").c_str());
    if (r.contains("fastest_workload_examples_per_s"))
      std::printf("  fastest workload trains     %12s examples/s (ctr batching is %sx that)\n",
                  fmt(r, "fastest_workload_examples_per_s", "%.0f").c_str(),
                  fmt(r, "ctr_batching_over_training", "%.1f").c_str());
  }
}

}  // namespace

namespace {

/// Busy and total jiffies of all CPUs from /proc/stat's first line (false when unreadable).
bool cpu_jiffies(double& busy, double& total) {
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return false;
  double v[8] = {0};
  const int got = std::fscanf(f, "cpu %lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2],
                              &v[3], &v[4], &v[5], &v[6], &v[7]);
  std::fclose(f);
  if (got < 4) return false;
  total = 0;
  for (double x : v) total += x;
  busy = total - v[3] - v[4];  // minus idle and iowait
  return total > 0;
}

}  // namespace

double other_busy_cores(int sample_ms) {
  double b0, t0, b1, t1;
  if (!cpu_jiffies(b0, t0)) return -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(sample_ms));
  if (!cpu_jiffies(b1, t1) || t1 <= t0) return -1;
  const double cpus = std::max(1u, std::thread::hardware_concurrency());
  return (b1 - b0) / (t1 - t0) * cpus;
}

void ensure_omp_wait_policy(char** argv, int threads, bool huge_page_heap) {
  const bool heap = huge_page_heap && util::request_huge_page_heap();
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) {
    // The user's (or a parent's) setting stands; a choice note inherited from a parent
    // recsys is only kept when it describes what is set.
    if (std::getenv("RECSYS_OMP_CHOICE") != nullptr && std::getenv("RECSYS_OMP_CHOSEN") == nullptr)
      unsetenv("RECSYS_OMP_CHOICE");
    if (heap) {
      std::fflush(stdout);
      std::fflush(stderr);
      execv("/proc/self/exe", argv);
      util::forget_huge_page_heap_request();  // only on failure
    }
    return;
  }
  const double cpus = std::max(1u, std::thread::hardware_concurrency());
  const double busy = other_busy_cores(200);
  char choice[96];
  if (busy >= 0 && busy + threads <= cpus + 0.25) {
    // Cores to spare: a short spin (about 20k iterations, tens of microseconds) before sleeping
    // keeps the workers of back-to-back small parallel regions awake.
    setenv("GOMP_SPINCOUNT", "20000", 1);
    std::snprintf(choice, sizeof choice, "spin 20000 (other load %.2f of %.0f cores)", busy, cpus);
  } else {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    std::snprintf(choice, sizeof choice, "PASSIVE (other load %.2f of %.0f cores)", busy, cpus);
  }
  setenv("RECSYS_OMP_CHOICE", choice, 1);
  setenv("RECSYS_OMP_CHOSEN", "1", 1);
  std::fflush(stdout);
  std::fflush(stderr);
  execv("/proc/self/exe", argv);
  // Only on failure: libgomp already runs with its defaults; say nothing that is not in effect.
  for (const char* v : {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "RECSYS_OMP_CHOICE", "RECSYS_OMP_CHOSEN"})
    unsetenv(v);
  if (heap) util::forget_huge_page_heap_request();
}

int run_bench(const BenchOptions& options) {
  std::set<std::string> known(workload_names().begin(), workload_names().end());
  known.insert("pipeline");
  for (auto& w : options.workloads)
    if (!known.count(w))
      throw UsageError("--workloads: unknown workload '" + w +
                       "' (known: twotower_ssl, din, dien, pipeline)");
  check_optimisation_names(options.disable);
  if (!options.paired.empty()) {
    const auto& fixed = unpairable_names();
    if (!contains(optimisation_names(), options.paired))
      throw UsageError("--paired: unknown optimisation '" + options.paired + "' (known: " +
                       optimisation_list() + ")");
    if (contains(fixed, options.paired))
      throw UsageError("--paired: '" + options.paired + "' is set once per process (" +
                       join(fixed) + " cannot alternate step by step)");
    bool used = is_process_switch(options.paired);
    for (const auto& w : options.workloads) used = used || contains(workload_paths(w), options.paired);
    if (!used)
      throw UsageError("--paired: none of the selected workloads has the path '" +
                       options.paired + "'");
    if (options.plain || contains(options.disable, options.paired))
      throw UsageError("--paired " + options.paired +
                       ": the optimisation is switched off by --disable or --plain");
    if (options.steps < 2) throw UsageError("--paired needs --steps >= 2");
  }
  if (options.threads < 1) throw UsageError("--threads must be >= 1");
  if (options.steps < 1) throw UsageError("--steps must be >= 1");
  if (options.batch_scale < 1 || options.batch_scale > kMaxBatchScale)
    throw UsageError("--batch-scale must be in [1, " + std::to_string(kMaxBatchScale) + "], got " +
                     std::to_string(options.batch_scale));
  if (options.pipeline_lines < 100)
    throw UsageError("--pipeline-lines must be >= 100, got " + std::to_string(options.pipeline_lines));
  if (options.device != "cpu" && options.device != "cuda")
    throw UsageError("--device must be cpu or cuda, got '" + options.device + "'");

  auto run = [&](const std::string& name, auto fn) -> nlohmann::json {
    if (options.fork) return in_child(name, fn);
    auto r = fn();
    add_memory_ratio(r);  // without a child: this process's own VmHWM so far
    return r;
  };

  double gflops = 0;
  if (options.peak) {
    auto r = run("peak", [&] {
      torch::set_num_threads(options.threads);
      return nlohmann::json{{"gflops", measure_matmul_gflops()}};
    });
    if (r.contains("gflops")) gflops = r["gflops"].get<double>();
  }
  std::vector<nlohmann::json> rows;
  double fastest = 0;
  for (auto& name : options.workloads) {
    if (name == "pipeline") continue;
    auto r = run(name, [&] { return run_workload(name, options); });
    if (options.peak) add_bound(r, gflops);
    if (r.contains("examples_per_s"))
      fastest = std::max(fastest, r["examples_per_s"].get<double>());
    rows.push_back(r);
  }
  if (contains(options.workloads, "pipeline"))
    rows.push_back(run("pipeline", [&] { return run_pipeline(options, fastest); }));

  bool failed = false;
  for (auto& r : rows) failed = failed || r.contains("error");
  if (options.json) {
    for (auto& r : rows) std::printf("%s\n", r.dump().c_str());
  } else {
    if (options.peak)
      std::printf("float32 matmul rate: %.1f GFLOP/s at %d threads\n", gflops, options.threads);
    print_table(rows, options.peak);
  }
  std::fflush(stdout);
  return failed ? 1 : 0;
}

}  // namespace recsys::bench
