#include "models/dien/dien.h"

#include <limits>

#include "losses/dien_aux.h"
#include "models/dien/aux_fused.h"
#include "models/layers/rows.h"

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

torch::Tensor AuxiliaryNetImpl::forward_pairs(const torch::Tensor& h, const torch::Tensor& positive,
                                             const torch::Tensor& negative) {
  const int64_t H = options_.state_dim(), E = options_.behaviour_dim();
  TORCH_CHECK(h.dim() == 2 && h.size(1) == H && positive.dim() == 2 && positive.size(1) == E &&
                  negative.sizes() == positive.sizes() && positive.size(0) == h.size(0),
              "AuxiliaryNet::forward_pairs: h must be [P, ", H, "] and positive, negative [P, ", E,
              "], got ", h.sizes(), ", ", positive.sizes(), " and ", negative.sizes());
  auto& first = mlp_->linears()[0];
  auto w_h = first->weight.narrow(1, 0, H), w_e = first->weight.narrow(1, H, E);
  auto h_part = torch::addmm(first->bias, h, w_h.t());                       // [P, hidden]
  auto e_part = torch::mm(torch::cat({positive, negative}), w_e.t());        // [2P, hidden]
  auto pre = e_part + h_part.repeat({2, 1});
  return mlp_->forward_from(pre, 0).squeeze(-1);
}

torch::Tensor AuxiliaryNetImpl::loss_pairs(const torch::Tensor& h, const torch::Tensor& positive,
                                          const torch::Tensor& negative) {
  std::vector<torch::Tensor> weights, biases;
  for (auto& linear : mlp_->linears()) {
    weights.push_back(linear->weight);
    biases.push_back(linear->bias);
  }
  if (options_.fused() && auxiliary_loss_fusable(h, positive, negative, mlp_->options(), weights))
    return auxiliary_loss_fused(h, positive, negative, weights, biases, options_.activation());
  const int64_t P = h.size(0);
  auto logits = forward_pairs(h, positive, negative);
  return losses::auxiliary_loss(logits.narrow(0, 0, P).unsqueeze(0),
                                logits.narrow(0, P, P).unsqueeze(0),
                                torch::ones({1, P}, torch::kBool));
}

DienImpl::DienImpl(DienOptions options) : options_(std::move(options)) {
  const int64_t h = options_.extractor_hidden() > 0 ? options_.extractor_hidden() : behaviour_dim();
  const int64_t h2 = options_.evolution_hidden() > 0 ? options_.evolution_hidden() : h;
  build(GruLayer(GruLayerOptions(h, h2)
                     .kind(options_.evolution())
                     .fused(options_.fused())
                     .packed(options_.packed_gru())));
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
                              GruLayer(GruLayerOptions(e, h)
                                           .kind(GruKind::kGru)
                                           .fused(o.fused())
                                           .packed(o.packed_gru())));
  if (evo.kind() != GruKind::kGru)
    attention = register_module("attention", BilinearAttention(h, e));
  evolution = register_module("evolution", std::move(evolution_layer));
  aux = register_module(
      "aux", AuxiliaryNet(AuxiliaryNetOptions(h, e).hidden(o.aux_hidden()).fused(o.fused_aux())));
  mlp = register_module("mlp", make_ctr_mlp(evo.hidden_size() + 2 * e, o.mlp()));
}

bool DienImpl::wants_aux(const CtrModelInput& in) const {
  if (!is_training() || !in.neg_hist_item.defined() || options_.alpha_aux() <= 0 ||
      in.hist_item.size(1) < 2)
    return false;
  TORCH_CHECK(in.neg_hist_item.sizes() == in.hist_item.sizes() &&
                  in.neg_hist_category.sizes() == in.hist_item.sizes(),
              "Dien: neg_hist_item and neg_hist_category must be [B, T] like hist_item ",
              in.hist_item.sizes(), ", got ", in.neg_hist_item.sizes(), " and ",
              in.neg_hist_category.sizes());
  return true;
}

bool DienImpl::packs(const CtrModelInput& in) const {
  if (!options_.pack_valid() || !in.hist_item.defined() || !in.hist_item.device().is_cpu() ||
      !in.hist_length.defined() || !in.hist_length.device().is_cpu())
    return false;
  for (const auto* g : {&extractor, &evolution})
    if (!(*g)->options().fused() || !(*g)->options().packed()) return false;
  if (in.hist_item.dim() != 2 || in.hist_category.sizes() != in.hist_item.sizes() ||
      in.hist_length.dim() != 1 || in.hist_length.size(0) != in.hist_item.size(0) ||
      in.hist_item.size(1) < 1 || in.hist_length.numel() == 0)
    return false;
  // Every history non-empty and within T, and the mask (when given) the one the lengths imply.
  const int64_t T = in.hist_item.size(1);
  if (in.hist_length.min().item<int64_t>() < 1 || in.hist_length.max().item<int64_t>() > T)
    return false;
  if (in.hist_mask.defined()) {
    auto implied = torch::arange(T, in.hist_length.options()).unsqueeze(0) <
                   in.hist_length.unsqueeze(1);
    if (in.hist_mask.scalar_type() != torch::kBool || in.hist_mask.sizes() != implied.sizes() ||
        !torch::equal(in.hist_mask, implied))
      return false;
  }
  return true;
}

DienOutput DienImpl::forward_packed(const CtrModelInput& in) {
  const int64_t B = in.hist_item.size(0), T = in.hist_item.size(1);
  const auto layout = PackedLayout::from_lengths(in.hist_length, T);
  const auto& index = layout.index;
  const auto& row = layout.row;
  const int64_t N = layout.size();
  // One lookup per table for the candidates, the packed steps and (with the auxiliary loss) the
  // negatives at each pair's next step: one sparse gradient per table instead of three.
  const bool aux_on = wants_aux(in);
  const int64_t P = aux_on ? layout.pair_first.size(0) : 0;
  std::vector<torch::Tensor> items{in.item, in.hist_item.reshape(-1).index_select(0, index)};
  std::vector<torch::Tensor> cats{in.category, in.hist_category.reshape(-1).index_select(0, index)};
  if (P > 0) {
    auto next = index.index_select(0, layout.pair_next);  // b * T + t + 1 of each pair
    items.push_back(in.neg_hist_item.reshape(-1).index_select(0, next));
    cats.push_back(in.neg_hist_category.reshape(-1).index_select(0, next));
  }
  auto all = embeddings->forward(torch::cat(items), torch::cat(cats));  // [B + N + P, E]
  // split, not narrows: one backward node concatenates the parts' gradients.
  auto parts = P > 0 ? all.split_with_sizes({B, N, P}) : all.split_with_sizes({B, N});
  auto candidate = parts[0];
  auto x = parts[1];
  auto history_sum = scatter_add_rows(x, row, B);
  auto interests = extractor->forward_packed(layout, x).outputs;  // [N, H]

  DienOutput out;
  if (aux_on) {
    if (P == 0) {
      out.aux_loss = torch::zeros({}, x.options());  // no (h_t, e_{t+1}) pair in the batch
    } else {
      out.aux_loss = aux->loss_pairs(gather_rows(interests, layout.pair_first),
                                     gather_rows(x, layout.pair_next), parts[2]);
    }
  }

  torch::Tensor final_state;
  if (evolution_kind() == GruKind::kGru) {
    final_state = evolution->forward_packed(layout, interests).final_state;
  } else {
    // The softmax of h_t . (W q) over each sequence's valid steps, on the packed steps.
    auto wq = torch::matmul(candidate, attention->weight.t());        // [B, H]
    auto s = (interests * gather_rows(wq, row)).sum(1);               // [N]
    auto shift = torch::full({B * T}, -std::numeric_limits<double>::infinity(), s.options())
                     .index_copy_(0, index, s.detach())
                     .view({B, T})
                     .amax(1);  // each row's max (rows have >= 1 step)
    auto e = torch::exp(s - shift.index_select(0, row));
    auto a = e / gather_rows(scatter_add_rows(e, row, B), row);
    out.attention = torch::zeros({B * T}, a.options()).index_copy(0, index, a).view({B, T});
    final_state = evolution->forward_packed(layout, interests, a).final_state;
  }
  out.logits = mlp->forward(torch::cat({final_state, candidate, history_sum}, -1)).squeeze(-1);
  return out;
}

DienOutput DienImpl::forward_parts(const CtrModelInput& in) {
  if (packs(in)) return forward_packed(in);
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
  if (wants_aux(in)) {
    auto negatives = embeddings->forward(in.neg_hist_item, in.neg_hist_category);
    auto pairs = losses::auxiliary_pairs(interests, behaviours, negatives, mask);
    if (pairs.mask.device().is_cpu()) {
      // Only the valid pairs go through the auxiliary MLP (on the bench shapes about half of
      // them; the MLP is the largest cost of the step). Same value and gradients as the masked
      // form below; on an accelerator the gather's size would cost a host-device sync.
      auto index = pairs.mask.reshape(-1).nonzero().squeeze(1);
      auto gather = [&](const torch::Tensor& t) {
        return t.reshape({-1, t.size(-1)}).index_select(0, index);
      };
      if (index.numel() == 0)
        out.aux_loss = torch::zeros({}, behaviours.options());  // no valid pair in the batch
      else
        out.aux_loss = aux->loss_pairs(gather(pairs.states), gather(pairs.positive),
                                       gather(pairs.negative));
    } else {
      out.aux_loss = losses::auxiliary_loss(aux->forward(pairs.states, pairs.positive),
                                            aux->forward(pairs.states, pairs.negative), pairs.mask);
    }
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
