// din and dien (WORKLOADS.md): a models::CtrModel trained with BCE-with-logits (+ its auxiliary
// loss) by train::Optimizer on pre-generated batches.
#include <random>

#include "framework/bench/bench.h"
#include "framework/bench/workloads.h"
#include "framework/train/optimizer.h"

namespace recsys::bench {

namespace {

class CtrWorkload : public Workload {
 public:
  CtrWorkload(std::string name, const CtrShapes& s, int64_t batch, bool negatives,
              torch::Device device, uint64_t seed, const CtrModelBuilder& build,
              std::function<double(const CtrShapes&)> flops,
              std::function<double(const CtrShapes&, int64_t)> activations, bool fused_optimizer)
      : name_(std::move(name)),
        s_(s),
        batch_(batch),
        device_(device),
        flops_(flops(s)),
        activations_(activations(s, batch)) {
    torch::manual_seed(seed);
    model_ = build(s);
    model_->to(device);
    params_ = model_->parameters();
    train::OptimizerOptions opt;
    opt.fused = fused_optimizer;
    optimizer_ = std::make_unique<train::Optimizer>(params_, opt);
    std::mt19937_64 rng(seed);
    ZipfSampler zipf(s.items, 1.1);
    std::uniform_int_distribution<int64_t> length(s.min_len, s.max_len), uniform_item(1, s.items),
        label(0, 1);
    auto item_id = [&] { return 1 + zipf(rng); };
    auto category = [&](int64_t item) { return item % s.categories + 1; };
    const int64_t B = batch, T = s.max_len;
    for (int k = 0; k < kBatches; ++k) {
      auto i64 = torch::TensorOptions().dtype(torch::kInt64);
      models::CtrModelInput in;
      in.item = torch::empty({B}, i64);
      in.category = torch::empty({B}, i64);
      in.hist_item = torch::zeros({B, T}, i64);
      in.hist_category = torch::zeros({B, T}, i64);
      in.hist_mask = torch::zeros({B, T}, torch::kBool);
      in.hist_length = torch::empty({B}, i64);
      if (negatives) {
        in.neg_hist_item = torch::zeros({B, T}, i64);
        in.neg_hist_category = torch::zeros({B, T}, i64);
      }
      auto lab = torch::empty({B}, torch::kFloat32);
      for (int64_t b = 0; b < B; ++b) {
        int64_t it = item_id();
        in.item.data_ptr<int64_t>()[b] = it;
        in.category.data_ptr<int64_t>()[b] = category(it);
        lab.data_ptr<float>()[b] = static_cast<float>(label(rng));
        int64_t len = length(rng);
        in.hist_length.data_ptr<int64_t>()[b] = len;
        for (int64_t t = 0; t < len; ++t) {
          int64_t h = item_id();
          in.hist_item.data_ptr<int64_t>()[b * T + t] = h;
          in.hist_category.data_ptr<int64_t>()[b * T + t] = category(h);
          in.hist_mask.data_ptr<bool>()[b * T + t] = true;
          if (negatives) {
            int64_t n = uniform_item(rng);
            in.neg_hist_item.data_ptr<int64_t>()[b * T + t] = n;
            in.neg_hist_category.data_ptr<int64_t>()[b * T + t] = category(n);
          }
        }
      }
      auto move = [&](torch::Tensor& t) {
        if (t.defined()) t = t.to(device);
      };
      for (auto* t : {&in.item, &in.category, &in.hist_item, &in.hist_category, &in.hist_mask,
                      &in.hist_length, &in.neg_hist_item, &in.neg_hist_category})
        move(*t);
      inputs_.push_back(in);
      labels_.push_back(lab.to(device));
    }
  }

  std::string name() const override { return name_; }
  int64_t examples_per_step() const override { return batch_; }

  torch::Tensor step() override {
    size_t k = next_++ % inputs_.size();
    begin_step();
    optimizer_->zero_grad();
    auto out = model_->forward(inputs_[k]);
    auto loss = torch::binary_cross_entropy_with_logits(out.logits, labels_[k]);
    if (out.aux_loss.defined()) loss = loss + out.aux_loss;
    if (out.regularization.defined()) loss = loss + out.regularization;
    return finish_step(loss, *optimizer_);
  }

  double flops_per_example() const override { return flops_; }
  double param_bytes() const override { return tensor_bytes(params_); }
  double optimizer_state_bytes() const override { return 2 * tensor_bytes(params_); }
  double activation_bytes_estimate() const override { return activations_; }

 private:
  static constexpr int kBatches = 8;
  std::string name_;
  CtrShapes s_;
  int64_t batch_;
  torch::Device device_;
  double flops_, activations_;
  std::shared_ptr<models::CtrModel> model_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<train::Optimizer> optimizer_;
  std::vector<models::CtrModelInput> inputs_;
  std::vector<torch::Tensor> labels_;
  size_t next_ = 0;
};

}  // namespace

double din_flops_per_example(const CtrShapes& s) {
  const double T = static_cast<double>(s.max_len);
  const int64_t e = 2 * s.dim;  // one behaviour: item + category embedding
  std::vector<int64_t> att = s.attention;
  att.push_back(1);
  std::vector<int64_t> mlp = s.mlp;
  mlp.push_back(1);
  // Attention MLP over every (padded) position on [q, k, q - k, q * k]; output MLP once.
  double fwd = mlp_forward_flops(4 * e, att, T) + mlp_forward_flops(3 * e, mlp, 1);
  return 3 * fwd;
}

double dien_flops_per_example(const CtrShapes& s) {
  const double T = static_cast<double>(s.max_len);
  const int64_t e = 2 * s.dim, H = s.gru_hidden;
  // A GRU step: x W_ih^T [I -> 3H] and h W_hh^T [H -> 3H].
  double gru = T * (mlp_forward_flops(e, {3 * H}, 1) + mlp_forward_flops(H, {3 * H}, 1));
  std::vector<int64_t> aux = s.aux;
  aux.push_back(1);
  std::vector<int64_t> mlp = s.mlp;
  mlp.push_back(1);
  double fwd = gru                                               // interest extractor
               + 2 * (T - 1) * mlp_forward_flops(H + e, aux, 1)  // aux: positive and negative
               + mlp_forward_flops(e, {H}, 1) + 2 * T * H        // W e_candidate, then h_t . (W e)
               + gru                                             // AUGRU
               + mlp_forward_flops(H + 2 * e, mlp, 1);           // output MLP
  return 3 * fwd;
}

std::unique_ptr<Workload> make_ctr_workload(const std::string& name, const CtrShapes& s,
                                            torch::Device device, uint64_t seed,
                                            const CtrModelBuilder& build, bool fused_optimizer) {
  if (name == "din")
    return std::make_unique<CtrWorkload>(
        name, s, s.batch, false, device, seed, build, din_flops_per_example,
        [](const CtrShapes& s, int64_t B) {
          // Saved activations per (example, position): the gathered behaviour, the attention
          // unit's hidden layers (pre- and post-activation) and score; per example the MLP.
          double per_pos = 2.0 * s.dim * 2;
          for (auto h : s.attention) per_pos += 2.0 * h;
          double per_ex = per_pos * s.max_len + 6.0 * s.dim;
          for (auto h : s.mlp) per_ex += 3.0 * h;  // linear, Dice's normalised input, output
          return 4.0 * B * per_ex;
        },
        fused_optimizer);
  return std::make_unique<CtrWorkload>(name, s, s.dien_batch, true, device, seed, build,
                                       dien_flops_per_example, [](const CtrShapes& s, int64_t B) {
                                         const double H = static_cast<double>(s.gru_hidden),
                                                      e = 2.0 * s.dim;
                                         // Per position: behaviour and negative embeddings, two
                                         // GRUs' gates and states, the aux MLP on the positive and
                                         // the negative pair.
                                         double per_pos = 2 * e + 2 * (4 * H + 3 * H);
                                         for (auto h : s.aux) per_pos += 2 * 2.0 * h;
                                         double per_ex = per_pos * s.max_len + 3 * e;
                                         for (auto h : s.mlp) per_ex += 3.0 * h;
                                         return 4.0 * B * per_ex;
                                       },
                                       fused_optimizer);
}

}  // namespace recsys::bench
