#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "framework/dist/dist.h"

namespace recsys::train {

using Metrics = std::map<std::string, double>;

/// A batch produced by a task's stream; concrete tasks define its contents.
struct Batch {
  virtual ~Batch() = default;
  virtual int64_t size() const = 0;
};

/// An epoch's batches in order; next() returns nullptr at the end.
class BatchStream {
 public:
  virtual ~BatchStream() = default;
  virtual std::unique_ptr<Batch> next() = 0;
};

struct StreamOptions {
  int64_t batch_size = 512;
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t prefetch = 4;  ///< batches prepared ahead by a background thread (0: inline)
};

/// One export of a trained model (`recsys export`): a table with one row per key. Keys are text
/// (raw ids, names, ranks); values are numbers, one column each.
struct ExportTable {
  std::vector<std::string> key_columns;
  std::vector<std::vector<std::string>> keys;  ///< [rows][key_columns.size()]
  std::vector<std::string> value_columns;
  torch::Tensor values;  ///< CPU [rows, value_columns.size()]
};

/// An export a task offers: its name and a one-line description.
struct ExportKind {
  std::string name, help;
  bool uses_split = true;  ///< the table depends on the split (else the split is ignored)
  bool uses_k = false;     ///< a ranked list: `k` entries per user
};

/// What one export asks for.
struct ExportRequest {
  std::string kind;
  /// "valid" or "test", where the kind depends on the split (user histories, samples).
  std::string split = "test";
  /// Entries per user of ranked exports.
  int64_t k = 50;
  /// Ranked exports: every user, not only those with held-out items in the split.
  bool all_users = false;
};

struct StepOutput {
  torch::Tensor loss;                          ///< scalar to minimise
  std::map<std::string, torch::Tensor> parts;  ///< named components, logged (detached)
};

/// What the trainer drives: a model plus its losses, augmentations and data. The trainer never
/// names a concrete model; a task never runs the optimisation loop.
class Task {
 public:
  virtual ~Task() = default;
  /// Every trainable parameter and buffer lives below this module (checkpoints save it).
  virtual torch::nn::Module& module() = 0;
  virtual void to(torch::Device device) = 0;
  virtual std::unique_ptr<BatchStream> train_stream(const StreamOptions& options) = 0;
  /// Forward pass and loss on one batch; `generator` drives any randomness (augmentations).
  virtual StepOutput forward(Batch& batch, torch::Generator& generator) = 0;
  /// Optionally the whole step's loss and gradients in one call (e.g. train::run_staged, the
  /// towers' forwards and backwards side by side): adds the gradients of the step's loss to
  /// `params`' gradients as forward(...).loss.backward() would, fills `out` (loss detached) and
  /// returns true; false (the default) leaves the step to forward() and backward().
  virtual bool forward_backward(Batch& batch, torch::Generator& generator,
                                const std::vector<torch::Tensor>& params, StepOutput& out) {
    return false;
  }
  /// Metrics on "valid" or "test"; runs under NoGradGuard in eval mode.
  virtual Metrics evaluate(const std::string& split) = 0;
  virtual int64_t train_examples() const = 0;
  /// The validation metric that selects the best checkpoint unless the config names another,
  /// and whether larger is better.
  virtual std::pair<std::string, bool> selection_metric() const = 0;
  /// Every metric evaluate("valid") reports (checked against train.early_stopping.metric before
  /// training starts); empty = unknown, not checked.
  virtual std::vector<std::string> metric_names() const { return {}; }
  /// The data-parallel group this task trains in (Trainer calls it once, before training); a task
  /// whose loss couples examples (in-batch negatives) may use it to see the other ranks' rows.
  virtual void set_distributed(const dist::Context&) {}
  /// What export_table() can produce (empty: the task exports nothing).
  virtual std::vector<ExportKind> export_kinds() const { return {}; }
  /// One export from the current parameters (NoGradGuard, eval mode). Called only with a kind
  /// from export_kinds().
  virtual ExportTable export_table(const ExportRequest& request) {
    throw std::logic_error("export '" + request.kind + "' is not offered by this task");
  }
  /// Facts about the data for results.json (sizes, test points per slice, ...).
  virtual nlohmann::json describe() const { return nlohmann::json::object(); }
};

}  // namespace recsys::train
