#pragma once
#include <torch/torch.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace recsys::train {
class Optimizer;
}

// `recsys bench`: the canonical training workloads of WORKLOADS.md (shared/bench) run through the
// framework's own models, losses and optimizer on in-memory synthetic batches, plus a benchmark of
// the data pipeline (log parsing and batch building).
namespace recsys::bench {

/// Shapes of the twotower_ssl workload (defaults: WORKLOADS.md).
struct TwoTowerShapes {
  int64_t users = 100000, items = 200000, dim = 64, history = 20;
  int64_t ages = 10, genders = 3, categories = 1000, category_bag = 3, keywords = 10000,
          keyword_bag = 5, cities = 500;
  std::vector<int64_t> hidden = {256, 128, 64};
  int64_t batch = 1024, ssl_batch = 1024;
  double temperature = 0.05, ssl_weight = 0.5;
};

/// Shapes of the din and dien workloads (defaults: WORKLOADS.md; `batch` is din's, dien uses
/// `dien_batch`).
struct CtrShapes {
  int64_t items = 100000, categories = 1000, dim = 18;
  int64_t batch = 256, dien_batch = 128, max_len = 50, min_len = 5;
  std::vector<int64_t> attention = {80, 40};
  std::vector<int64_t> mlp = {200, 80};
  int64_t gru_hidden = 36;
  std::vector<int64_t> aux = {100, 50};
};

struct BenchShapes {
  TwoTowerShapes two_tower;
  CtrShapes ctr;
  /// Tiny shapes for tests (every code path, a few milliseconds a step).
  static BenchShapes tiny();
  /// These shapes with every batch multiplied by `factor` (twotower_ssl's main and SSL
  /// batches, din's and dien's batches); vocabularies, widths and lengths unchanged.
  BenchShapes with_batch_scale(int64_t factor) const;
};

struct BenchOptions {
  /// twotower_ssl, din, dien, pipeline (and the hidden peak).
  std::vector<std::string> workloads = {"twotower_ssl", "din", "dien"};
  /// LibTorch intra-op threads.
  int threads = 2;
  std::string device = "cpu";
  /// One JSON line per workload instead of a table.
  bool json = false;
  /// Measure the float32 matmul rate and report FLOP-bound fractions.
  bool peak = false;
  /// Timed steps after the warm-up.
  int steps = 30;
  int warmup = 5;
  /// Run each workload in a forked child (its own peak RSS). Tests run in-process.
  bool fork = true;
  /// Use every workload's plain path (the oracle of its optimised one), for before/after ratios.
  bool plain = false;
  /// Optimisations switched off one by one (names in optimisation_names()); plain = all of them.
  std::vector<std::string> disable;
  /// The larger-batch variants: every workload's batch multiplied by this (1 = WORKLOADS.md's
  /// canonical batches). Reported as `batch_scale`, with the examples per step as `batch`.
  int batch_scale = 1;
  /// Lines of the generated interaction log for the pipeline benchmark.
  int64_t pipeline_lines = 2000000;
  /// When set: a Chrome trace of each workload's timed steps (LibTorch's profiler) is written to
  /// PREFIX.WORKLOAD.json. Profiling slows small operators down; the timings it reports are of
  /// the profiled run.
  std::string profile;
  /// When set: an optimisation switched off for every other timed step; each on-step is
  /// compared with the off-steps either side of it and the median of those ratios reported as
  /// `paired_ratio` (a before/after ratio that the host's slow phases, which last many steps,
  /// cannot bias). A process-wide one (paired_switch_names()) is switched between the steps of
  /// one workload; a workload path (the others, except allocator and huge_pages, which are set
  /// once per process) gets a second workload from the same seed without it, the two stepped in
  /// turn (`paired_mode`: "process switch" or "two workloads").
  std::string paired;
  BenchShapes shapes;
};

/// The optimisations that are process-wide switches (set between steps): gemm, onednn_gemm,
/// gru_threads, padded_rows, work_sharing. The others are options of the workloads' models.
const std::vector<std::string>& paired_switch_names();
/// paired_switch_names() joined with ", " (help and error messages).
std::string paired_switch_list();
/// Whether `name` is one of paired_switch_names().
bool is_process_switch(const std::string& name);
/// The optimisations that are options of this workload's models (what --disable changes in it,
/// besides the process-wide ones); empty for an unknown name.
const std::vector<std::string>& workload_paths(const std::string& name);

/// Sets one of them (UsageError for another name).
void set_process_switch(const std::string& name, bool on);

/// One training workload: owns its model, optimizer and pre-generated batches.
class Workload {
 public:
  virtual ~Workload() = default;
  virtual std::string name() const = 0;
  virtual int64_t examples_per_step() const = 0;
  /// One optimizer step on the next pre-generated batch (round robin). Returns the loss tensor
  /// (not synchronised: reading it is the caller's choice).
  virtual torch::Tensor step() = 0;
  /// Forward + backward floating-point operations per example, counted from the shapes
  /// (matmuls 2mnk, backward 2x forward for matmuls; see flops.h of each workload).
  virtual double flops_per_example() const = 0;
  /// Bytes of trainable parameters, of optimizer state, and an estimate of one batch's activations.
  virtual double param_bytes() const = 0;
  virtual double optimizer_state_bytes() const = 0;
  virtual double activation_bytes_estimate() const = 0;
  /// How the last step ran: "one graph" (forward, then backward, each operator split over the
  /// threads) or "staged" (train::run_staged: the forward phase then holds forward, losses and
  /// backward, and the backward phase is 0).
  virtual std::string step_structure() const { return "one graph"; }
  /// Milliseconds of the last step's forward (to the loss), backward and optimizer step.
  const std::array<double, 3>& phase_ms() const { return phase_ms_; }

 protected:
  /// Marks the end of phase `i` (0 forward, 1 backward, 2 optimizer) of the current step;
  /// phase 0 is timed from begin_step().
  void begin_step();
  void end_phase(int i);
  /// The rest of a step once the loss is computed: ends the forward phase, runs backward and
  /// the optimizer step (each timed as its phase); returns the detached loss.
  torch::Tensor finish_step(const torch::Tensor& loss, train::Optimizer& optimizer);

 private:
  std::array<double, 3> phase_ms_{};
  std::chrono::steady_clock::time_point phase_start_;
};

/// Names of the training workloads.
const std::vector<std::string>& workload_names();
/// The optimisations --disable can switch off, each with its plain path (its test oracle):
/// optimizer (train::Optimizer's fused path), cross_entropy (the fused softmax cross-entropy
/// kernel), item_tower_batch (positives and both SSL views as one item-tower pass),
/// first_layer (DIN's fused attention first layer), packing (DIN / DIEN on the packed valid
/// steps), gru_packed (gru_packed inside DIEN's GRU layers), gru_fused (the hand-written BPTT;
/// off = the per-step reference GRU), dice (the output MLPs' fused Dice kernel), aux_fused
/// (DIEN's auxiliary loss as one kernel, value and gradients in one pass),
/// small_vocab_projection (the towers' first layer through
/// the projected rows of small vocabularies), allocator (util::retain_freed_memory; off =
/// glibc's defaults), gemm (products through util::gemm_parallel, one BLAS call per thread;
/// off = ATen's products, threaded by the BLAS itself), gru_threads (the packed GRU's
/// recurrences split by sequence ranges across threads; off = on one thread), padded_rows
/// (util::padded_stride: the blockwise kernels' buffers in rows 64 bytes longer where a row is
/// a multiple of 512 bytes; off = rows of exactly their values), work_sharing (util::ShareGroup:
/// a staged step's thread that has finished its branch takes chunks of the other branch's
/// products and kernels; off = it waits at the join).
const std::vector<std::string>& optimisation_names();
/// optimisation_names() joined with ", " (help and error messages).
std::string optimisation_list();

/// Builds a workload (throws UsageError for an unknown name) with the optimisations in
/// `disabled` switched off.
std::unique_ptr<Workload> make_workload(const std::string& name, const BenchShapes& shapes,
                                        torch::Device device, uint64_t seed = 1,
                                        const std::vector<std::string>& disabled = {});

std::unique_ptr<Workload> make_twotower_ssl(const TwoTowerShapes& s, torch::Device device,
                                            uint64_t seed);
std::unique_ptr<Workload> make_din(const CtrShapes& s, torch::Device device, uint64_t seed);
std::unique_ptr<Workload> make_dien(const CtrShapes& s, torch::Device device, uint64_t seed);

/// Zipf(exponent) over ranks 0..n-1 (P(k) proportional to (k + 1)^-exponent), by inverse CDF.
class ZipfSampler {
 public:
  ZipfSampler(int64_t n, double exponent);
  int64_t operator()(std::mt19937_64& rng) const;
  /// log P(rank).
  double log_prob(int64_t rank) const;

 private:
  std::vector<double> cdf_;
  double log_norm_, exponent_;
};

/// FLOPs of one forward pass of an MLP with widths in_dim -> hidden... over `rows` rows: 2 in out
/// per layer and row (biases and activations are not counted).
double mlp_forward_flops(int64_t in_dim, const std::vector<int64_t>& hidden, double rows);

/// Runs warm-up + timed steps of one workload in this process; returns its JSON record.
nlohmann::json run_workload(const std::string& name, const BenchOptions& options);
/// The data-pipeline benchmark; `fastest_examples_per_s` (0 = unknown) is the comparison point.
nlohmann::json run_pipeline(const BenchOptions& options, double fastest_examples_per_s);
/// Float32 matmul rate in GFLOP/s (median of timed 1024x1024 products), at the current threads.
double measure_matmul_gflops(int64_t n = 1024, int repeats = 20);

/// The `recsys bench` command: every workload (each in its own child process when
/// options.fork), then the table or the JSON lines on stdout. Returns the exit status.
int run_bench(const BenchOptions& options);

/// Cores kept busy by other processes, from /proc/stat sampled over `sample_ms` (-1 when
/// unavailable). Called before this process starts any work.
double other_busy_cores(int sample_ms);

/// libgomp reads its wait policy once, when it is loaded. When neither OMP_WAIT_POLICY nor
/// GOMP_SPINCOUNT is set, this picks one from the machine's current load and re-executes the
/// binary (/proc/self/exe) with the same arguments: with cores to spare for `threads` workers, a
/// short spin (GOMP_SPINCOUNT=20000) so that workers stay awake between back-to-back parallel
/// regions; on a loaded machine OMP_WAIT_POLICY=PASSIVE, because spinning workers steal the cores
/// the others need (measured 10-40x slower; docs/performance.md). The choice is reported as
/// omp_wait_policy. With `huge_page_heap`, the same re-execution also starts glibc's malloc with
/// transparent huge pages (util::request_huge_page_heap; it re-executes for that alone when the
/// wait policy is set already). Returns only when nothing had to be done or the exec failed.
void ensure_omp_wait_policy(char** argv, int threads, bool huge_page_heap = true);

/// Sum of the bytes of `tensors`.
double tensor_bytes(const std::vector<torch::Tensor>& tensors);

}  // namespace recsys::bench
