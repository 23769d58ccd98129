#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "framework/config/config.h"
#include "framework/train/optimizer.h"
#include "framework/dist/dist.h"
#include "framework/train/run_dir.h"
#include "framework/train/task.h"

namespace recsys::train {

struct EarlyStopping {
  std::string metric = "";  ///< validation metric to select the best step ("" = the task's default)
  bool maximize = true;
  int64_t patience = 3;     ///< evaluations without improvement before stopping (0 = never stop)
};

struct TrainerOptions {
  int64_t epochs = 5;
  int64_t max_steps = 0;        ///< 0 = no limit
  int64_t batch_size = 512;
  OptimizerOptions optimizer;
  int64_t eval_every = 0;       ///< steps between validations; 0 = once per epoch
  EarlyStopping early_stopping;
  bool checkpoints = true;      ///< write checkpoints/last.pt and best.pt
  int64_t log_every = 50;
  int64_t prefetch = 4;
  std::string device = "auto";  ///< auto | cpu | cuda | cuda:N
  int64_t threads = 2;
  std::string progress = "auto";  ///< auto (a bar on a terminal) | bar | lines | none
  bool evaluate_test = true;
  /// Data-parallel runs: seconds a rank waits in a collective (or for the others to join)
  /// before it fails, e.g. when another rank hangs (Gloo's timeout).
  double collective_timeout_s = 1800;

  static TrainerOptions from_config(const config::Reader& r);
};

torch::Device resolve_device(const std::string& name);

/// A 64-bit hash of a module's parameters and buffers (names, shapes, dtypes and bytes, in the
/// module's order). Checkpoints store it; load_module_state compares it, so that a checkpoint
/// whose tensor data was damaged inside an intact archive is an error rather than a silently
/// different model.
uint64_t module_checksum(torch::nn::Module& module);

/// Reads a checkpoint file (DataError naming it when it is missing, truncated or not one).
void open_checkpoint(torch::serialize::InputArchive& archive, const std::filesystem::path& file,
                     torch::Device device);
/// Loads a module's parameters and buffers (Module::save's layout) into its existing tensors (copy_,
/// so their storage, and an optimizer's references to it, stay), each shape checked, then compares
/// the stored checksum: DataError naming `file` (and the tensor) for a checkpoint of another model
/// or a damaged one. Checkpoints written before checksums existed pass the comparison.
void load_module_state(torch::nn::Module& module, torch::serialize::InputArchive& archive,
                       const std::string& file);

struct TrainerState {
  int64_t step = 0, epoch = 0, examples = 0;
  /// Batches of the current epoch already trained, and whether its end (hooks included) passed:
  /// where a resumed run picks up.
  int64_t epoch_batches = 0;
  bool epoch_complete = false;
  /// Stopped by early stopping (patience), as opposed to max_steps: a resumed run stays stopped.
  bool early_stopped = false;
  double last_loss = 0;
  std::map<std::string, double> last_parts;
  bool stop = false;
  double best_value = 0;
  int64_t best_step = -1, best_epoch = -1, evals_since_best = 0;
  Metrics best_valid;
};

class Trainer;

/// Extension points called by the loop; the built-in evaluation, checkpoint and logging hooks
/// use the same interface.
class Hook {
 public:
  virtual ~Hook() = default;
  virtual void on_train_begin(Trainer&) {}
  virtual void on_step_end(Trainer&) {}
  virtual void on_epoch_end(Trainer&) {}
  virtual void on_train_end(Trainer&) {}
};

/// The optimisation loop: zero_grad / forward / backward / step, plus hooks.
class Trainer {
 public:
  /// With an active `dist` context this process is one rank of a data-parallel run: it trains on
  /// every world-th batch of each epoch's stream (the same number of full batches on every rank;
  /// the last, partial one is dropped), gradients are averaged before each step, and only rank 0
  /// validates, logs, checkpoints and writes results (its early-stopping decision is broadcast).
  Trainer(Task& task, TrainerOptions options, RunDir run_dir, nlohmann::json resolved_config,
          uint64_t seed, dist::Context dist = dist::Context());
  /// Trains, restores the best validation state, evaluates on test; returns results.json.
  nlohmann::json fit();

  void add_hook(std::shared_ptr<Hook> hook) { hooks_.push_back(std::move(hook)); }
  /// An entry fit() adds to results.json (written once, atomically, at the end).
  void add_result(const std::string& key, nlohmann::json value) { result_extras_[key] = std::move(value); }
  Task& task() { return task_; }
  Optimizer& optimizer() { return *optimizer_; }
  const TrainerOptions& options() const { return options_; }
  TrainerState& state() { return state_; }
  const RunDir& run_dir() const { return run_dir_; }
  torch::Device device() const { return device_; }
  /// Optimizer steps per epoch: the batches of an epoch, or in a data-parallel run each rank's
  /// share of the full ones.
  int64_t steps_per_epoch() const {
    const int64_t n = task_.train_examples(), b = options_.batch_size;
    return dist_.active() ? n / b / dist_.world() : (n + b - 1) / b;
  }

  /// Validation with best-state tracking and early stopping (called by the evaluation hook).
  void validate();
  void save_checkpoint(const std::string& name) const;
  /// Continues the run in the run directory from checkpoints/last.pt, exactly where it stopped:
  /// model, optimizer state, step, epoch and the position inside it, the best validation state
  /// (best.pt) and early-stopping counters, and the random generators. Call before fit(); fit()
  /// then keeps metrics.jsonl up to the checkpoint's step instead of starting it afresh.
  /// Throws DataError for a missing or mismatched checkpoint. `from` is the run directory to read
  /// (default: this trainer's); the ranks of a data-parallel run all read rank 0's, each taking
  /// its own generators from it.
  void resume(const std::filesystem::path& from = {});
  std::string default_metric() const;

 private:
  void snapshot_best();
  void restore_best();
  /// Every step's loss is checked for finiteness: at once on the CPU (before the optimizer step,
  /// so the parameters stay finite); on an accelerator folded into a device flag (no host sync
  /// per step) that check_pending_loss() reads before any validation, checkpoint, log line and at
  /// the end. Either way a non-finite loss ends the run with NumericError (exit 2) before
  /// anything computed from it is saved.
  void check_loss(const torch::Tensor& loss);
  void check_pending_loss();
  /// NumericError naming the first parameter with a NaN or infinity: a step can leave a finite
  /// loss and a diverged model (the loss is computed before the update), which must be neither
  /// validated, saved nor reported.
  void check_parameters() const;

  Task& task_;
  TrainerOptions options_;
  RunDir run_dir_;
  nlohmann::json config_;
  uint64_t seed_;
  torch::Device device_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<std::shared_ptr<Hook>> hooks_;
  TrainerState state_;
  std::vector<torch::Tensor> best_params_;
  dist::Context dist_;
  bool resumed_ = false;
  int64_t last_validated_step_ = -1;  // -1: no validation yet in this process
  bool fallback_validation_ = false;  // the end-of-run validation when none came before
  int64_t forget_from_step_ = -1;     // resumed from such a validation: its record is dropped
  nlohmann::json result_extras_ = nlohmann::json::object();  // add_result()
  // The validation at the end of an epoch cut short by max_steps (eval_every = 0): a longer run
  // would not make it, so its checkpoint also carries the bookkeeping from before it, and a
  // resumed run goes back to that (and to the best.pt before it, kept as best_before_cut.pt).
  bool cut_validation_ = false;
  bool epoch_cut_short_ = false;  // set by fit() around the epoch-end hooks
  TrainerState before_cut_;
  int64_t forget_valid_at_ = -1;  // resumed from such a validation: its valid record is dropped
  torch::Generator gen_;         // the forward pass's randomness (augmentations, dropout masks)
  /// Data parallel: every rank's forward and default generator states at the last validation
  /// (rank 0's checkpoints store them).
  torch::Tensor rank_generators_;
  torch::Tensor nonfinite_;      // accelerator: any non-finite loss since the last check
  int64_t checked_through_ = 0;  // the last step whose loss is known to be finite
};

}  // namespace recsys::train
