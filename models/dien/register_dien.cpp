// The "dien" entry of ctr_models(): parses the `model` section into DienOptions.
// (A file of its own, so that the tests of the model alone do not link the CTR task.)
#include "models/din/ctr_model_options.h"
#include "models/dien/dien.h"

namespace recsys::models {
namespace {

CtrModelBuilder dien_factory(const config::Reader& r) {
  // The embedding, output-MLP and regularisation keys are those of every CTR model.
  auto common = parse_common_model_options(r);
  DienOptions base(common.embeddings(CtrDataInfo{}));
  base.extractor_hidden(r.get<int64_t>("extractor_hidden", base.extractor_hidden()))
      .evolution_hidden(r.get<int64_t>("evolution_hidden", base.evolution_hidden()))
      .evolution(parse_gru_kind(r.choice("evolution", "augru", {"augru", "agru", "aigru", "gru"})))
      .fused(r.get<bool>("fused", base.fused()))
      .fused_aux(r.get<bool>("fused_aux", base.fused_aux()))
      .mlp(common.mlp)
      .aux_hidden(parse_widths(r, "aux_hidden", base.aux_hidden()))
      .alpha_aux(r.get<double>("alpha_aux", base.alpha_aux()));
  if (base.extractor_hidden() < 0)
    r.fail("extractor_hidden", "must be >= 0 (0 = the behaviour width item_dim + category_dim)");
  if (base.evolution_hidden() < 0)
    r.fail("evolution_hidden", "must be >= 0 (0 = extractor_hidden)");
  if (!(base.alpha_aux() >= 0)) r.fail("alpha_aux", "must be >= 0 (0 disables the auxiliary loss)");
  return [base, common](const CtrDataInfo& data) -> std::shared_ptr<CtrModel> {
    auto o = base;
    o.embeddings(common.embeddings(data));
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
