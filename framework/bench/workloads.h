#pragma once
// Switches between each workload's optimised path and the plain path that serves as its oracle
// (tests run both and compare the losses).
#include <functional>

#include "framework/bench/bench.h"
#include "models/din/ctr_task.h"

namespace recsys::bench {

struct TwoTowerPaths {
  /// Positives and both SSL views through the item tower as one batch (else three passes).
  bool batched_item_tower = true;
  /// The fused softmax cross-entropy kernel for both losses (else torch's cross_entropy).
  bool cross_entropy_kernel = true;
  /// Both losses' score products, cross-entropies and means as one blockwise kernel each
  /// (losses/softmax_fused.h; else product, cross-entropy and mean composed).
  bool fused_softmax_mean = true;
  /// train::Optimizer's fused path (else its tensor-op path).
  bool fused_optimizer = true;
  /// Towers project the small vocabularies' used rows through the first layer
  /// (TowerOptions::project_small_vocabularies; else every example's embedding is multiplied).
  bool project_small_vocabularies = true;
  /// ... and distinct bags projected once (TowerOptions::distinct_bags).
  bool distinct_bags = true;
  /// The towers' layers after the first (and the normalisation) as one blockwise kernel
  /// (TowerOptions::fused_mlp).
  bool fused_mlp = true;
  /// Sparse embedding lookups through models::pooled_rows_sparse (TowerOptions::fused_lookup;
  /// else torch::embedding + pooling).
  bool fused_lookup = true;
  /// The main batch's positives through the item tower once per distinct item, the in-batch
  /// softmax over distinct columns counted with their multiplicity
  /// (losses::inbatch_softmax_mean_distinct; else every row's positive and column).
  bool distinct_items = true;
  /// At 2 threads on the CPU, the step through train::run_staged: the user tower with the
  /// positives on one thread and both SSL views on the other, then both losses on both threads,
  /// then the towers' backwards side by side (the positives and the views then take two
  /// item-tower passes); else one graph whose operators each split across the threads.
  bool parallel_branches = true;
};

std::unique_ptr<Workload> make_twotower_ssl(const TwoTowerShapes& s, torch::Device device,
                                            uint64_t seed, TwoTowerPaths paths);

struct CtrPaths {
  /// din: the activation unit's fused first layer; dien: both GRUs through gru_fused.
  bool fused = true;
  /// din, dien: the whole model on the packed valid steps (DinOptions / DienOptions pack_valid).
  bool packed_model = true;
  /// dien: gru_packed inside each GRU layer (else gru_fused over the padded steps).
  bool packed_gru = true;
  /// train::Optimizer's fused path (else its tensor-op path).
  bool fused_optimizer = true;
  /// The output MLP's Dice layers through their fused kernel (DiceOptions::fused).
  bool fused_dice = true;
  /// dien: the auxiliary loss through its fused kernel (DienOptions::fused_aux).
  bool fused_aux = true;
  /// din: the attention scorer after its first layer as one blockwise kernel
  /// (DinOptions::attention_fused_tail).
  bool fused_attention_tail = true;
};

std::unique_ptr<Workload> make_din(const CtrShapes& s, torch::Device device, uint64_t seed,
                                   CtrPaths paths);
std::unique_ptr<Workload> make_dien(const CtrShapes& s, torch::Device device, uint64_t seed,
                                    CtrPaths paths);

/// Builds the CTR model of a workload for the given shapes.
using CtrModelBuilder = std::function<std::shared_ptr<models::CtrModel>(const CtrShapes&)>;

/// din (batch s.batch) or dien (batch s.dien_batch, with a negative history) around any CtrModel.
std::unique_ptr<Workload> make_ctr_workload(const std::string& name, const CtrShapes& s,
                                            torch::Device device, uint64_t seed,
                                            const CtrModelBuilder& build,
                                            bool fused_optimizer = true);

/// Forward + backward FLOPs per example (matmuls only, 2mnk, backward = 2x forward), over every
/// padded history position, of the canonical formulation (DIN's attention on the 4x-wide input).
double din_flops_per_example(const CtrShapes& s);
double dien_flops_per_example(const CtrShapes& s);

}  // namespace recsys::bench
