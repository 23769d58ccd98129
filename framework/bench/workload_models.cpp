// The models behind the din and dien workloads: models::Din and models::Dien with the shapes of
// WORKLOADS.md (ids 1..items with 0 as padding, so the tables have items + 1 and categories + 1
// rows).
#include "framework/bench/workloads.h"
#include "models/dien/dien.h"
#include "models/din/din.h"

namespace recsys::bench {

namespace {

models::CtrEmbeddingsOptions embeddings(const CtrShapes& s) {
  return models::CtrEmbeddingsOptions(s.items + 1, s.categories + 1)
      .item_dim(s.dim)
      .category_dim(s.dim)
      .sparse(true);
}

models::CtrMlpOptions output_mlp(const CtrShapes& s, bool fused_dice) {
  models::CtrMlpOptions o;
  o.fused_dice = fused_dice;
  o.hidden = s.mlp;
  o.activation = models::Activation::kDice;
  return o;
}

}  // namespace

std::unique_ptr<Workload> make_din(const CtrShapes& s, torch::Device device, uint64_t seed,
                                   CtrPaths paths) {
  return make_ctr_workload("din", s, device, seed, [paths](const CtrShapes& s) {
    auto din = models::Din(models::DinOptions(embeddings(s))
                               .attention_hidden(s.attention)
                               .attention_activation(models::Activation::kSigmoid)
                               .attention_softmax(false)
                               .mlp(output_mlp(s, paths.fused_dice))
                               .pack_valid(paths.packed_model)
                               .attention_fused_first_layer(paths.fused)
                               .attention_fused_tail(paths.fused_attention_tail));
    return std::static_pointer_cast<models::CtrModel>(din.ptr());
  }, paths.fused_optimizer);
}

std::unique_ptr<Workload> make_dien(const CtrShapes& s, torch::Device device, uint64_t seed,
                                    CtrPaths paths) {
  return make_ctr_workload("dien", s, device, seed, [paths](const CtrShapes& s) {
    auto dien = models::Dien(models::DienOptions(embeddings(s))
                                 .extractor_hidden(s.gru_hidden)
                                 .evolution_hidden(s.gru_hidden)
                                 .evolution(models::GruKind::kAugru)
                                 .fused(paths.fused)
                                 .mlp(output_mlp(s, paths.fused_dice))
                                 .aux_hidden(s.aux)
                                 .alpha_aux(1.0)
                                 .pack_valid(paths.packed_model)
                                 .packed_gru(paths.packed_gru)
                                 .fused_aux(paths.fused_aux));
    return std::static_pointer_cast<models::CtrModel>(dien.ptr());
  }, paths.fused_optimizer);
}

std::unique_ptr<Workload> make_din(const CtrShapes& s, torch::Device device, uint64_t seed) {
  return make_din(s, device, seed, CtrPaths{});
}

std::unique_ptr<Workload> make_dien(const CtrShapes& s, torch::Device device, uint64_t seed) {
  return make_dien(s, device, seed, CtrPaths{});
}

}  // namespace recsys::bench
