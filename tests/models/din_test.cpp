#include "models/din/din.h"

#include <set>

#include "models/baselines/base_model.h"
#include "models/baselines/wide_deep.h"
#include "models/din/ctr_task.h"
#include "support.h"

using namespace recsys::models;
using recsys::testing::require_close;

namespace {

constexpr int64_t kItems = 30, kCategories = 7;

/// B = 3 rows with 3, 1 and 0 valid steps, padded to `t` (>= 3) with `pad_item` at the padded
/// steps (0 in real batches; anything else must change nothing since the mask says so).
CtrModelInput make_input(int64_t t, int64_t pad_item = 0) {
  std::vector<std::vector<int64_t>> hist{{4, 9, 13}, {21}, {}};
  CtrModelInput in;
  in.item = torch::tensor({5, 11, 17}, torch::kLong);
  in.category = in.item.remainder(5) + 2;
  in.hist_item = torch::full({3, t}, pad_item, torch::kLong);
  in.hist_mask = torch::zeros({3, t}, torch::kBool);
  in.hist_length = torch::zeros({3}, torch::kLong);
  for (int64_t b = 0; b < 3; ++b) {
    for (size_t k = 0; k < hist[b].size(); ++k) {
      in.hist_item[b][static_cast<int64_t>(k)] = hist[b][k];
      in.hist_mask[b][static_cast<int64_t>(k)] = true;
    }
    in.hist_length[b] = static_cast<int64_t>(hist[b].size());
  }
  in.hist_category = torch::where(in.hist_item > 0, in.hist_item.remainder(5) + 2,
                                  torch::zeros_like(in.hist_item));
  return in;
}

CtrEmbeddingsOptions small_embeddings() {
  return CtrEmbeddingsOptions(kItems, kCategories).item_dim(4).category_dim(3).init_std(0.3);
}

CtrMlpOptions small_mlp(Activation a = Activation::kDice) {
  CtrMlpOptions m;
  m.hidden = {8, 4};
  m.activation = a;
  return m;
}

std::shared_ptr<CtrModel> make_model(const std::string& type, Activation a = Activation::kDice) {
  if (type == "din")
    return Din(DinOptions(small_embeddings()).attention_hidden({6, 5}).mlp(small_mlp(a))).ptr();
  if (type == "base_model")
    return BaseModel(BaseModelOptions(small_embeddings()).mlp(small_mlp(a))).ptr();
  auto wd = WideDeep(
      WideDeepOptions(BaseModelOptions(small_embeddings()).mlp(small_mlp(a))).wide_buckets(97));
  // The wide weights start at 0; give them values so that masking is actually exercised.
  torch::NoGradGuard g;
  wd->wide_weight.uniform_(-1, 1);
  wd->wide_weight[0].zero_();
  return wd.ptr();
}

}  // namespace

TEST_CASE("CTR models return one logit per row and ignore padded steps", "[din][ctr]") {
  for (std::string type : {"din", "base_model", "wide_deep"}) {
    for (auto act : {Activation::kDice, Activation::kPrelu}) {
      DYNAMIC_SECTION(type << (act == Activation::kDice ? " dice" : " prelu")) {
        recsys::testing::seed(3);
        auto model = make_model(type, act);
        model->eval();  // Dice uses running statistics: rows do not interact
        auto base = model->forward(make_input(3)).logits;
        REQUIRE(base.sizes() == torch::IntArrayRef{3});
        REQUIRE(torch::isfinite(base).all().item<bool>());
        // Longer padding, and padding filled with real ids, change nothing.
        require_close(model->forward(make_input(6)).logits, base, 1e-5, 1e-6);
        require_close(model->forward(make_input(6, 8)).logits, base, 1e-5, 1e-6);
        // A real step does change the output of the row that holds it.
        auto in = make_input(3);
        in.hist_item[1][1] = 8;
        in.hist_category[1][1] = 8 % 5 + 2;
        in.hist_mask[1][1] = true;
        in.hist_length[1] = 2;
        auto changed = model->forward(in).logits;
        REQUIRE(std::abs(changed[1].item<float>() - base[1].item<float>()) > 1e-6);
        // Training mode with a batch gives gradients to the embedding tables (sparse).
        model->train();
        auto out = model->forward(make_input(3));
        out.logits.sum().backward();
        bool any_sparse = false;
        for (auto& p : model->named_parameters())
          if (p.key().find("table") != std::string::npos)
            any_sparse |= p.value().grad().is_sparse();
        REQUIRE(any_sparse);
      }
    }
  }
}

TEST_CASE("DIN attention weighs only the valid steps", "[din]") {
  recsys::testing::seed(4);
  auto din = Din(DinOptions(small_embeddings()).attention_hidden({6, 5}).mlp(small_mlp()));
  din->eval();
  din->forward(make_input(5, 3));
  auto w = din->last_attention();
  REQUIRE(w.sizes() == torch::IntArrayRef({3, 5}));
  auto mask = make_input(5).hist_mask;
  REQUIRE((w.masked_select(~mask) == 0).all().item<bool>());
  // Sigmoid-activated scores without softmax: positive on the valid steps.
  REQUIRE((w.masked_select(mask) != 0).all().item<bool>());
  auto soft = Din(DinOptions(small_embeddings()).attention_softmax(true).mlp(small_mlp()));
  soft->eval();
  soft->forward(make_input(5, 3));
  auto sums = soft->last_attention().sum(1);
  require_close(sums, torch::tensor({1.0f, 1.0f, 0.0f}), 1e-5, 1e-6);  // row 2 has no history
}

TEST_CASE("MBA regularisation touches only the batch's rows, scaled by 1/n_j", "[din]") {
  recsys::testing::seed(5);
  std::vector<int64_t> item_count(kItems), category_count(kCategories);
  for (int64_t i = 0; i < kItems; ++i) item_count[i] = i % 4;  // includes zeros (-> 1)
  for (int64_t c = 0; c < kCategories; ++c) category_count[c] = c + 1;
  const double lambda = 0.5;
  auto emb = small_embeddings()
                 .regularization(CtrRegularization::kMba)
                 .lambda(lambda)
                 .item_count(item_count)
                 .category_count(category_count);
  for (std::string type : {"din", "base_model"}) {
    DYNAMIC_SECTION(type) {
      std::shared_ptr<CtrModel> model;
      if (type == "din")
        model = Din(DinOptions(emb).mlp(small_mlp())).ptr();
      else
        model = BaseModel(BaseModelOptions(emb).mlp(small_mlp())).ptr();
      auto in = make_input(4);
      auto reg = model->forward(in).regularization;
      REQUIRE(reg.defined());
      reg.backward();
      auto params = model->named_parameters();
      auto item_table = params["embeddings.item_table"];
      auto cat_table = params["embeddings.category_table"];
      REQUIRE(item_table.grad().is_sparse());  // no dense step over the whole table
      auto g_item = item_table.grad().to_dense();
      auto g_cat = cat_table.grad().to_dense();
      // Batch items: candidates 5, 11, 17 and history 4, 9, 13, 21 (21 twice would count once).
      std::set<int64_t> items{5, 11, 17, 4, 9, 13, 21};
      double expected = 0;
      for (int64_t i = 0; i < kItems; ++i) {
        auto w = item_table.detach()[i];
        if (items.count(i)) {
          double inv = 1.0 / std::max<int64_t>(item_count[i], 1);
          require_close(g_item[i], lambda * inv * w, 1e-5, 1e-7);
          expected += 0.5 * lambda * inv * w.pow(2).sum().item<double>();
        } else {
          REQUIRE((g_item[i] == 0).all().item<bool>());
        }
      }
      std::set<int64_t> cats;
      for (int64_t i : items) cats.insert(i % 5 + 2);
      for (int64_t c = 0; c < kCategories; ++c) {
        auto w = cat_table.detach()[c];
        if (cats.count(c)) {
          double inv = 1.0 / static_cast<double>(category_count[c]);
          require_close(g_cat[c], lambda * inv * w, 1e-5, 1e-7);
          expected += 0.5 * lambda * inv * w.pow(2).sum().item<double>();
        } else {
          REQUIRE((g_cat[c] == 0).all().item<bool>());
        }
      }
      require_close(reg.item<double>(), expected, 1e-5);
    }
  }
}

TEST_CASE("plain L2 covers every row and no regularisation returns nothing", "[din]") {
  auto none = Din(DinOptions(small_embeddings()).mlp(small_mlp()));
  REQUIRE_FALSE(none->forward(make_input(3)).regularization.defined());
  auto l2 = Din(DinOptions(small_embeddings().regularization(CtrRegularization::kL2).lambda(0.1))
                    .mlp(small_mlp()));
  auto reg = l2->forward(make_input(3)).regularization;
  auto& e = l2->embeddings;
  double expected = 0.05 * (e->item_table.detach().pow(2).sum().item<double>() +
                            e->category_table.detach().pow(2).sum().item<double>());
  require_close(reg.item<double>(), expected, 1e-5);
}

TEST_CASE("Wide&Deep cross ids are in range and 0 exactly at padded steps", "[ctr]") {
  auto wd = WideDeep(
      WideDeepOptions(BaseModelOptions(small_embeddings()).mlp(small_mlp())).wide_buckets(13));
  auto in = make_input(4, 6);
  auto ids = wd->cross_ids(in);
  REQUIRE(ids.sizes() == torch::IntArrayRef({3, 8}));
  auto mask = torch::cat({in.hist_mask, in.hist_mask}, 1);
  REQUIRE((ids.masked_select(~mask) == 0).all().item<bool>());
  auto valid = ids.masked_select(mask);
  REQUIRE((valid >= 1).all().item<bool>());
  REQUIRE((valid < 13).all().item<bool>());
  // The wide part starts at 0: the logit is the deep part's alone.
  wd->eval();
  auto deep = wd->deep->mlp->forward(wd->deep->features(in)).squeeze(1);
  require_close(wd->forward(in).logits, deep, 1e-6, 1e-7);
}

TEST_CASE("DIN's packed path (valid steps only) equals the padded one in value and gradient",
          "[din]") {
  for (bool softmax : {false, true}) {
    CAPTURE(softmax);
    auto build = [&](bool pack) {
      recsys::testing::seed(8);
      auto m = Din(DinOptions(small_embeddings())
                       .attention_hidden({6, 5})
                       .attention_softmax(softmax)
                       .mlp(small_mlp(Activation::kPrelu))
                       .pack_valid(pack));
      m->to(torch::kFloat64);
      return m;
    };
    auto packed = build(true), padded = build(false);
    REQUIRE(packed->attention->packs(torch::kCPU));
    REQUIRE_FALSE(padded->attention->packs(torch::kCPU));
    auto in = make_input(5, 3);  // garbage ids in the padding; row 2 has no valid step
    auto lp = packed->forward(in).logits, lq = padded->forward(in).logits;
    require_close(lp, lq, 0, 1e-12);
    require_close(packed->last_attention(), padded->last_attention(), 0, 1e-12);
    lp.pow(2).sum().backward();
    lq.pow(2).sum().backward();
    auto pq = padded->named_parameters();
    for (const auto& p : packed->named_parameters()) {
      INFO(p.key());
      auto a = p.value().grad(), b = pq[p.key()].grad();
      REQUIRE(a.defined() == b.defined());
      if (!a.defined()) continue;
      require_close(a.is_sparse() ? a.to_dense() : a, b.is_sparse() ? b.to_dense() : b, 0, 1e-12);
    }
  }
}
