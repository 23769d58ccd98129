#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "framework/config/config.h"
#include "framework/registry/registry.h"

// The CTR ranking task ("ctr") and the interface its models implement (DIN, BaseModel,
// Wide&Deep, DIEN). A model sees only tensors: the task builds the batches, adds the BCE loss,
// the model's auxiliary loss and its regularisation term, and computes AUC / GAUC / logloss.
//
// Adding a model:
//   1. derive `XxxImpl` from CtrModel (options triad, TORCH_MODULE(Xxx));
//   2. write a CtrModelFactory that parses the `model` section (every key except `type`, which the
//      task reads) into typed options, validates them with Reader::fail, and returns a builder;
//   3. call `ctr_models().add("xxx", factory, "one-line help")` from a register function that
//      register_builtin_ctr_models() (models/din/ctr_task.cpp) calls.
namespace recsys::models {

/// One mini-batch as the model sees it, every tensor on the model's device. Ids follow
/// recsys::data: 0 = padding, 1 = unknown, real ids from 2.
struct CtrModelInput {
  /// [B] int64 candidate item and its category.
  torch::Tensor item, category;
  /// [B, T] int64 behaviour history, oldest first, right-padded with 0.
  torch::Tensor hist_item, hist_category;
  /// [B, T] bool, true on the valid (non-padded) steps.
  torch::Tensor hist_mask;
  /// [B] int64 number of valid steps (may be 0 when data.min_history = 0).
  torch::Tensor hist_length;
  /// [B, T] int64, only when the model's needs_negative_history() is true (DIEN's auxiliary
  /// loss): at each valid step t a uniformly drawn item != hist_item[b, t] and its category;
  /// 0 at the padded steps. Undefined otherwise.
  torch::Tensor neg_hist_item, neg_hist_category;
};

/// What a CTR model returns.
struct CtrOutput {
  /// [B] unnormalised click logits (the task applies the sigmoid / BCE-with-logits).
  torch::Tensor logits;
  /// Optional scalar added to the loss as is (already weighted), e.g. DIEN's auxiliary loss.
  /// Leave undefined when the model has none.
  torch::Tensor aux_loss;
  /// Optional scalar regularisation term added to the loss as is (already multiplied by its
  /// lambda), e.g. mini-batch aware L2. Leave undefined when the model has none.
  torch::Tensor regularization;
};

/// Base class of every CTR model. Register submodules and parameters as usual; the task owns
/// the model as a submodule named "model", moves it to the device and switches train/eval mode.
/// Embedding tables should be looked up with sparse gradients
/// (`torch::embedding(table, ids, 0, false, /*sparse=*/true)`) so the optimizer only updates the
/// rows a batch touched.
class CtrModel : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;
  /// Scores one batch. Must not mutate `input`.
  virtual CtrOutput forward(const CtrModelInput& input) = 0;
  /// True when the task must fill CtrModelInput::neg_hist_item / neg_hist_category.
  virtual bool needs_negative_history() const { return false; }
};

/// Facts about the training data a model may need when it is built.
struct CtrDataInfo {
  /// Vocabulary sizes, including the padding (0) and unknown (1) rows.
  int64_t num_items = 0, num_categories = 0;
  /// [num_items], [num_categories]: occurrences of each id among the training samples' targets
  /// and histories (the n_j of DIN's mini-batch aware regularisation).
  std::vector<int64_t> item_count, category_count;
  /// [num_items] category of each item (for models that need it).
  std::vector<int64_t> item_category;
};

/// Builds the model once the data is loaded (called after the whole config validated).
using CtrModelBuilder = std::function<std::shared_ptr<CtrModel>(const CtrDataInfo& data)>;
/// Parses and validates the `model` section; `type` has already been consumed.
using CtrModelFactory = std::function<CtrModelBuilder(const config::Reader& model)>;

/// The models the "ctr" task can train, by `model.type`.
Registry<CtrModelFactory>& ctr_models();
/// Adds din, base_model and wide_deep (idempotent).
void register_builtin_ctr_models();

/// Registers the "ctr" task (and the built-in CTR models and data sources); idempotent.
void register_ctr_task();

}  // namespace recsys::models
