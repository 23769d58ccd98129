// The "dien" entry of ctr_models(): parses the `model` section into DienOptions.
// (A file of its own, so that the tests of the model alone do not link the CTR task.)
#include <stdexcept>

#include "models/dien/dien.h"

namespace recsys::models {
namespace {

std::vector<int64_t> widths(const config::Reader& r, const std::string& key,
                            const std::vector<int64_t>& fallback) {
  auto w = r.get<std::vector<int64_t>>(key, fallback);
  if (w.empty()) r.fail(key, "give at least one layer width");
  for (auto x : w)
    if (x < 1) r.fail(key, "layer widths must be positive");
  return w;
}

CtrModelBuilder dien_factory(const config::Reader& r) {
  // The embedding and output-MLP keys are DIN's (models/din/ctr_task.cpp), so that configs of the
  // two models share them.
  CtrEmbeddingsOptions emb(0, 0);  // the vocabulary sizes and counts come from the data
  emb.item_dim(r.get<int64_t>("item_dim", emb.item_dim()))
      .category_dim(r.get<int64_t>("category_dim", emb.category_dim()))
      .init_std(r.get<double>("init_std", emb.init_std()))
      .sparse(r.get<bool>("sparse_embeddings", emb.sparse()))
      .regularization(
          parse_ctr_regularization(r.choice("regularization", "none", {"none", "mba", "l2"})))
      .lambda(r.get<double>("reg_lambda", emb.lambda()));
  if (emb.item_dim() < 1) r.fail("item_dim", "must be at least 1");
  if (emb.category_dim() < 1) r.fail("category_dim", "must be at least 1");
  if (!(emb.init_std() > 0)) r.fail("init_std", "must be positive");
  if (emb.lambda() < 0) r.fail("reg_lambda", "must be >= 0");
  if (emb.regularization() != CtrRegularization::kNone && emb.lambda() == 0)
    r.fail("reg_lambda", "regularization is on but reg_lambda is 0; set a positive weight");

  CtrMlpOptions mlp;
  mlp.hidden = widths(r, "hidden", mlp.hidden);
  mlp.activation = parse_activation(
      r.choice("activation", "dice", {"dice", "prelu", "relu", "sigmoid", "tanh", "none"}));
  mlp.dropout = r.get<double>("dropout", mlp.dropout);
  if (mlp.dropout < 0 || mlp.dropout >= 1) r.fail("dropout", "must be in [0, 1)");

  DienOptions base(emb);
  base.extractor_hidden(r.get<int64_t>("extractor_hidden", base.extractor_hidden()))
      .evolution_hidden(r.get<int64_t>("evolution_hidden", base.evolution_hidden()))
      .evolution(parse_gru_kind(r.choice("evolution", "augru", {"augru", "agru", "aigru", "gru"})))
      .fused(r.get<bool>("fused", base.fused()))
      .mlp(mlp)
      .aux_hidden(widths(r, "aux_hidden", base.aux_hidden()))
      .alpha_aux(r.get<double>("alpha_aux", base.alpha_aux()));
  if (base.extractor_hidden() < 0)
    r.fail("extractor_hidden", "must be >= 0 (0 = the behaviour width item_dim + category_dim)");
  if (base.evolution_hidden() < 0)
    r.fail("evolution_hidden", "must be >= 0 (0 = extractor_hidden)");
  if (!(base.alpha_aux() >= 0)) r.fail("alpha_aux", "must be >= 0 (0 disables the auxiliary loss)");
  return [base](const CtrDataInfo& data) -> std::shared_ptr<CtrModel> {
    auto o = base;
    o.embeddings()
        .num_items(data.num_items)
        .num_categories(data.num_categories)
        .item_count(data.item_count)
        .category_count(data.category_count);
    return Dien(o).ptr();
  };
}

}  // namespace

void register_dien_model() {
  if (ctr_models().contains("dien")) return;
  ctr_models().add("dien", dien_factory,
                   "DIEN: GRU interest extractor + auxiliary loss, AUGRU/AGRU/AIGRU/GRU evolution");
}

}  // namespace recsys::models
