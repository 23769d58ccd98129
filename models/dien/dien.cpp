#include "models/dien/dien.h"

#include "losses/dien_aux.h"

namespace recsys::models {

AuxiliaryNetImpl::AuxiliaryNetImpl(AuxiliaryNetOptions options) : options_(std::move(options)) {
  TORCH_CHECK(options_.state_dim() > 0 && options_.behaviour_dim() > 0,
              "AuxiliaryNet: state_dim and behaviour_dim must be positive, got ",
              options_.state_dim(), " and ", options_.behaviour_dim());
  auto widths = options_.hidden();
  widths.push_back(1);
  mlp_ =
      register_module("mlp", Mlp(MlpOptions(options_.state_dim() + options_.behaviour_dim(), widths)
                                     .activation(options_.activation())));
}

torch::Tensor AuxiliaryNetImpl::forward(const torch::Tensor& h, const torch::Tensor& e) {
  TORCH_CHECK(h.size(-1) == options_.state_dim() && e.size(-1) == options_.behaviour_dim(),
              "AuxiliaryNet: h must end in ", options_.state_dim(), " and e in ",
              options_.behaviour_dim(), ", got ", h.sizes(), " and ", e.sizes());
  return mlp_->forward(torch::cat({h, e}, -1)).squeeze(-1);
}

DienImpl::DienImpl(DienOptions options) : options_(std::move(options)) {
  const int64_t h = options_.extractor_hidden() > 0 ? options_.extractor_hidden() : behaviour_dim();
  const int64_t h2 = options_.evolution_hidden() > 0 ? options_.evolution_hidden() : h;
  build(GruLayer(GruLayerOptions(h, h2).kind(options_.evolution()).fused(options_.fused())));
}

DienImpl::DienImpl(DienOptions options, GruLayer evolution_layer) : options_(std::move(options)) {
  TORCH_CHECK(!evolution_layer.is_empty(), "Dien: the injected evolution layer is empty");
  build(std::move(evolution_layer));
}

void DienImpl::build(GruLayer evolution_layer) {
  const auto& o = options_;
  TORCH_CHECK(o.extractor_hidden() >= 0 && o.evolution_hidden() >= 0,
              "Dien: extractor_hidden / evolution_hidden must be >= 0 (0 = default width)");
  TORCH_CHECK(o.alpha_aux() >= 0, "Dien: alpha_aux must be >= 0, got ", o.alpha_aux());
  embeddings = register_module("embeddings", CtrEmbeddings(o.embeddings()));
  const int64_t e = embeddings->dim();
  const int64_t h = o.extractor_hidden() > 0 ? o.extractor_hidden() : e;
  const auto& evo = evolution_layer->options();
  TORCH_CHECK(evo.input_size() == h, "Dien: the evolution layer's input_size must be the ",
              "extractor's width ", h, ", got ", evo.input_size());
  // The options record what was built, so options().evolution() always names the layer in use.
  options_.evolution(evo.kind());

  extractor = register_module("extractor",
                              GruLayer(GruLayerOptions(e, h).kind(GruKind::kGru).fused(o.fused())));
  if (evo.kind() != GruKind::kGru)
    attention = register_module("attention", BilinearAttention(h, e));
  evolution = register_module("evolution", std::move(evolution_layer));
  aux = register_module("aux", AuxiliaryNet(AuxiliaryNetOptions(h, e).hidden(o.aux_hidden())));
  mlp = register_module("mlp", make_ctr_mlp(evo.hidden_size() + 2 * e, o.mlp()));
}

DienOutput DienImpl::forward_parts(const CtrModelInput& in) {
  TORCH_CHECK(in.hist_item.dim() == 2 && in.hist_category.sizes() == in.hist_item.sizes(),
              "Dien: hist_item and hist_category must both be [B, T], got ", in.hist_item.sizes(),
              " and ", in.hist_category.sizes());
  const int64_t B = in.hist_item.size(0), T = in.hist_item.size(1);
  TORCH_CHECK(in.item.dim() == 1 && in.item.size(0) == B && in.category.sizes() == in.item.sizes(),
              "Dien: item and category must be [B] = [", B, "], got ", in.item.sizes(), " and ",
              in.category.sizes());
  TORCH_CHECK(in.hist_length.dim() == 1 && in.hist_length.size(0) == B,
              "Dien: hist_length must be [B] = [", B, "], got ", in.hist_length.sizes());
  auto mask = in.hist_mask.defined() ? in.hist_mask
                                     : torch::arange(T, in.hist_length.options()).unsqueeze(0) <
                                           in.hist_length.unsqueeze(1);

  auto candidate = embeddings->forward(in.item, in.category);             // [B, E]
  auto behaviours = embeddings->forward(in.hist_item, in.hist_category);  // [B, T, E]
  auto fmask = mask.unsqueeze(-1).to(behaviours.scalar_type());           // [B, T, 1]
  // Padded steps may hold any id; only valid steps enter the sum.
  auto history_sum = (behaviours * fmask).sum(1);  // [B, E]

  DienOutput out;
  // The GRUs need at least one step; an empty history runs over its padding and is zeroed below.
  const auto lengths = in.hist_length.clamp_min(1);
  const auto nonempty = (in.hist_length > 0).unsqueeze(1).to(behaviours.scalar_type());
  auto interests = extractor->forward(behaviours, lengths).outputs;  // [B, T, H]

  // The auxiliary loss only trains the extractor: evaluation skips it (and its negatives).
  if (is_training() && in.neg_hist_item.defined() && options_.alpha_aux() > 0 && T >= 2) {
    TORCH_CHECK(in.neg_hist_item.sizes() == in.hist_item.sizes() &&
                    in.neg_hist_category.sizes() == in.hist_item.sizes(),
                "Dien: neg_hist_item and neg_hist_category must be [B, T] like hist_item ",
                in.hist_item.sizes(), ", got ", in.neg_hist_item.sizes(), " and ",
                in.neg_hist_category.sizes());
    auto negatives = embeddings->forward(in.neg_hist_item, in.neg_hist_category);
    auto pairs = losses::auxiliary_pairs(interests, behaviours, negatives, mask);
    out.aux_loss = losses::auxiliary_loss(aux->forward(pairs.states, pairs.positive),
                                          aux->forward(pairs.states, pairs.negative), pairs.mask);
  }

  torch::Tensor final_state;
  if (evolution_kind() == GruKind::kGru) {
    final_state = evolution->forward(interests, lengths).final_state;
  } else {
    out.attention = attention->forward(candidate, interests, mask);
    final_state = evolution->forward(interests, lengths, out.attention).final_state;
  }
  final_state = final_state * nonempty;
  out.logits = mlp->forward(torch::cat({final_state, candidate, history_sum}, -1)).squeeze(-1);
  return out;
}

CtrOutput DienImpl::forward(const CtrModelInput& input) {
  auto parts = forward_parts(input);
  CtrOutput out;
  out.logits = parts.logits;
  if (parts.aux_loss.defined()) out.aux_loss = parts.aux_loss * options_.alpha_aux();
  out.regularization = embeddings->regularization(input);
  return out;
}

}  // namespace recsys::models
