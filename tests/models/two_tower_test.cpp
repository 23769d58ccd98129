// Feature encoder pooling, tower normalisation, and the retrieval task end to end.
#include <spdlog/spdlog.h>

#include <fstream>
#include <limits>

#include <unistd.h>

#include "framework/cli/commands.h"
#include "framework/config/config.h"
#include "framework/train/experiment.h"
#include "framework/train/trainer.h"
#include "models/layers/embedding.h"
#include "models/two_tower/two_tower.h"
#include "support.h"

using namespace recsys::models;
using recsys::testing::require_close;
using Json = nlohmann::json;
namespace fs = std::filesystem;

TEST_CASE("FeatureEncoder mean pooling ignores padding", "[model]") {
  std::vector<EmbeddingFeature> fs{{"tags", 6, 2, Pooling::kMean, false},
                                   {"id", 4, 2, Pooling::kMean, false},
                                   {"bag_sum", 6, 1, Pooling::kSum, false},
                                   {"price", 0, 2, Pooling::kMean, true}};
  FeatureEncoder enc(FeatureEncoderOptions(fs).sparse(false));
  CHECK(enc->out_dim() == 7);
  auto params = enc->named_parameters();
  // Construction zeroes the padding rows.
  CHECK(torch::equal(params["emb_tags"][0], torch::zeros({2})));
  CHECK(torch::equal(params["emb_bag_sum"][0], torch::zeros({1})));
  {
    torch::NoGradGuard g;
    // tags row r = (r, -r / 2) for r >= 1; id row r = (10 r, 1); bag_sum row r = r;
    // price: x * (3, -1) + (0.5, 0.25).
    for (int64_t r = 1; r < 6; ++r) {
      params["emb_tags"][r].copy_(torch::tensor({1.0f * r, -0.5f * r}));
      params["emb_bag_sum"][r].fill_(static_cast<float>(r));
    }
    for (int64_t r = 1; r < 4; ++r) params["emb_id"][r].copy_(torch::tensor({10.0f * r, 1.0f}));
    params["numeric_price"].copy_(torch::tensor({3.0f, -1.0f, 0.5f, 0.25f}).reshape({2, 2}));
  }
  auto tags = torch::tensor({2L, 3L, 0L, 0L, 5L, 0L, 0L, 0L, 1L, 4L, 5L, 2L}).reshape({3, 4});
  auto id = torch::tensor({1L, 3L, 2L}).reshape({3, 1});
  auto bag = torch::tensor({2L, 3L, 0L, 0L, 0L, 0L, 1L, 1L, 5L}).reshape({3, 3});
  auto price = torch::tensor({2.0f, -1.0f, 0.5f}).reshape({3, 1});
  auto out = enc->forward({tags, id, bag, price});
  // Row 0: mean of tags 2, 3 = (2.5, -1.25) (not divided by 4); row 1: tag 5 alone;
  // row 2: (1 + 4 + 5 + 2) / 4 = 3.
  auto expected = torch::tensor({2.5, -1.25, 10.0, 1.0, 5.0, 6.5, -1.75,
                                 5.0, -2.5, 30.0, 1.0, 0.0, -2.5, 1.25,
                                 3.0, -1.5, 20.0, 1.0, 7.0, 2.0, -0.25},
                                torch::kFloat64)
                      .reshape({3, 7});
  require_close(out, expected, 1e-6, 1e-6);

  // Sparse lookup: padding rows get no gradient.
  FeatureEncoder sparse_enc(FeatureEncoderOptions({{"tags", 6, 2, Pooling::kMean, false}}));
  sparse_enc->forward({tags}).sum().backward();
  auto grad = sparse_enc->named_parameters()["emb_tags"].grad();
  REQUIRE(grad.is_sparse());
  auto dense = grad.to_dense();
  CHECK(torch::equal(dense[0], torch::zeros({2})));
  // Row 0 of the batch has two real tags, each gets 1/2; tag 5 gets 1 (row 1) + 1/4 (row 2).
  require_close(dense.select(1, 0), torch::tensor({0.0, 0.25, 0.75, 0.5, 0.25, 1.25}, torch::kFloat64));
}

TEST_CASE("Tower outputs unit vectors", "[model]") {
  recsys::testing::seed(5);
  TowerOptions o({{"id", 20, 8, Pooling::kMean, false}, {"tags", 30, 8, Pooling::kMean, false}},
                 {16, 6});
  Tower tower(o);
  auto id = torch::randint(1, 20, {9, 1}, torch::kInt64);
  auto tags = torch::randint(0, 30, {9, 4}, torch::kInt64);
  auto out = tower->forward({id, tags});
  REQUIRE(out.sizes() == torch::IntArrayRef({9, 6}));
  require_close(out.norm(2, 1), torch::ones({9}), 1e-5, 1e-6);
  CHECK(tower->out_dim() == 6);
  Tower raw(TowerOptions(o).normalize(false));
  auto unnormalised = raw->forward({id, tags}).norm(2, 1);
  CHECK((unnormalised - 1).abs().max().item<double>() > 1e-3);
}

// ---------------------------------------------------------------- retrieval task end to end

namespace {

Json tiny_config(const std::vector<std::string>& extra) {
  recsys::cli::register_builtins();
  Json j = recsys::config::load_file("configs/experiments/twotower_synthetic.json");
  for (const char* o : {"data.num_users=300", "data.num_items=400", "train.epochs=2",
                        "train.progress=\"none\"", "train.log_every=1", "train.eval_every=1",
                        "train.early_stopping.patience=0",
                        "train.threads=1"})  // one thread: fast on a shared machine
    recsys::config::apply_override(j, o);
  for (auto& o : extra) recsys::config::apply_override(j, o);
  return j;
}

std::vector<Json> read_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<Json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(Json::parse(line));  // throws on a bad line
  return out;
}

}  // namespace

TEST_CASE("retrieval task trains on the tiny synthetic corpus", "[model]") {
  spdlog::set_level(spdlog::level::warn);
  auto dir = recsys::testing::temp_dir("retrieval_smoke");
  auto e = recsys::train::parse_experiment(tiny_config({}));
  auto results = recsys::train::run_experiment(e, recsys::train::RunDir(dir / "run"));
  spdlog::set_level(spdlog::level::info);
  auto run = dir / "run";
  REQUIRE(fs::exists(run / "results.json"));
  REQUIRE(fs::exists(run / "config.json"));
  CHECK(fs::exists(run / "checkpoints" / "best.pt"));
  CHECK(fs::exists(run / "checkpoints" / "last.pt"));
  Json saved;
  {
    std::ifstream in(run / "results.json");
    in >> saved;
  }
  CHECK(saved == results);
  CHECK(saved["seed"] == e.seed);  // written once, with the experiment's own entries
  CHECK(saved["task"] == "retrieval");
  for (const char* key : {"recall@10", "recall@10/head", "recall@10/tail", "recall@50",
                          "recall@50/head", "recall@50/tail", "ndcg@10", "ndcg@50/tail",
                          "test_points", "test_points/head", "test_points/tail"}) {
    INFO(key);
    REQUIRE(saved["metrics"].contains(key));
    double v = saved["metrics"][key].get<double>();
    CHECK(v >= 0);
    if (std::string(key).find("test_points") == std::string::npos) CHECK(v <= 1);
  }
  CHECK(saved["metrics"]["test_points"].get<double>() ==
        saved["metrics"]["test_points/head"].get<double>() +
            saved["metrics"]["test_points/tail"].get<double>());
  CHECK(saved["data"]["users"] == 300);
  CHECK(saved["data"]["items"] == 400);
  CHECK(saved["task"] == "retrieval");
  // Better than chance: 50 of 400 items would recall 12.5 % at random.
  CHECK(saved["metrics"]["recall@50"].get<double>() > 0.15);

  // One metrics line per evaluation (every step here) plus the test line.
  auto lines = read_lines(run / "metrics.jsonl");
  const int64_t steps = saved["steps"].get<int64_t>();
  REQUIRE(steps >= 10);
  REQUIRE(static_cast<int64_t>(lines.size()) == steps + 1);
  std::map<int64_t, int64_t> last_step_of_epoch;
  for (int64_t i = 0; i < steps; ++i) {
    CHECK(lines[i]["split"] == "valid");
    CHECK(lines[i]["step"] == i + 1);
    CHECK(lines[i]["metrics"].contains("recall@50"));
    last_step_of_epoch[lines[i]["epoch"].get<int64_t>()] = i + 1;
  }
  CHECK(lines.back()["split"] == "test");
  CHECK(last_step_of_epoch.size() == 2);

  // The loss falls: the first full batches against the last full ones (an epoch's final batch
  // may be small, so those are left out).
  std::vector<double> full;
  for (int64_t i = 0; i < steps; ++i) {
    bool epoch_end = last_step_of_epoch[lines[i]["epoch"].get<int64_t>()] == i + 1;
    if (!epoch_end) full.push_back(lines[i]["train_loss"].get<double>());
  }
  REQUIRE(full.size() >= 6);
  double first = (full[0] + full[1] + full[2]) / 3;
  double last = (full[full.size() - 1] + full[full.size() - 2] + full[full.size() - 3]) / 3;
  INFO("first " << first << " last " << last);
  CHECK(std::isfinite(first));
  CHECK(last < first - 0.1);
}

TEST_CASE("retrieval task: a non-finite loss raises NumericError", "[model]") {
  spdlog::set_level(spdlog::level::err);
  auto e = recsys::train::parse_experiment(
      tiny_config({"train.optimizer.lr=1e30", "train.epochs=1", "train.checkpoints=false"}));
  CHECK_THROWS_AS(recsys::train::run_experiment(e, recsys::train::RunDir()), recsys::NumericError);
  spdlog::set_level(spdlog::level::info);
}

TEST_CASE("trainer: a non-finite loss between log lines ends the run before anything is saved", "[model]") {
  // Logged every 100,000 steps and validated once per epoch: the loss is still checked at every
  // step, so the diverged parameters are never validated or checkpointed.
  spdlog::set_level(spdlog::level::err);
  auto dir = recsys::testing::temp_dir("retrieval_nan");
  auto e = recsys::train::parse_experiment(tiny_config(
      {"train.optimizer.lr=1e30", "train.epochs=1", "train.log_every=100000", "train.eval_every=0"}));
  CHECK_THROWS_AS(recsys::train::run_experiment(e, recsys::train::RunDir(dir / "run")),
                  recsys::NumericError);
  spdlog::set_level(spdlog::level::info);
  CHECK_FALSE(fs::exists(dir / "run" / "checkpoints" / "best.pt"));
  CHECK_FALSE(fs::exists(dir / "run" / "checkpoints" / "last.pt"));
  CHECK_FALSE(fs::exists(dir / "run" / "results.json"));
}

TEST_CASE("trainer: a model diverged after a finite loss is neither validated nor saved", "[model]") {
  // One step at lr 1e20: its loss was finite (computed before the update), the update leaves
  // parameters near 1e20 (finite) whose squares overflow in the towers' normalisation, so every
  // output is NaN. Validation must stop there: exit 2 material, no checkpoint, no results.
  spdlog::set_level(spdlog::level::off);
  auto dir = recsys::testing::temp_dir("retrieval_diverged");
  auto e = recsys::train::parse_experiment(tiny_config(
      {"train.optimizer.lr=1e20", "train.max_steps=1", "train.checkpoints=true"}));
  CHECK_THROWS_WITH(recsys::train::run_experiment(e, recsys::train::RunDir(dir / "run")),
                    Catch::Contains("tower's outputs hold NaN or infinite values"));
  spdlog::set_level(spdlog::level::info);
  CHECK_FALSE(fs::exists(dir / "run" / "checkpoints" / "best.pt"));
  CHECK_FALSE(fs::exists(dir / "run" / "checkpoints" / "last.pt"));
  CHECK_FALSE(fs::exists(dir / "run" / "results.json"));
  // NaN parameters themselves are named before anything is evaluated.
  auto task_dir = recsys::testing::temp_dir("retrieval_nan_parameter");
  auto e2 = recsys::train::parse_experiment(tiny_config({"train.max_steps=2", "train.checkpoints=true"}));
  auto task = e2.build_task(e2.seed);
  {
    torch::NoGradGuard g;
    task->module().parameters().back().view(-1)[0] = std::numeric_limits<float>::quiet_NaN();
  }
  recsys::train::Trainer trainer(*task, e2.trainer, recsys::train::RunDir(task_dir / "run"), e2.config, e2.seed);
  spdlog::set_level(spdlog::level::off);
  CHECK_THROWS_WITH(trainer.validate(), Catch::Contains("holds NaN or infinite values after step 0"));
  spdlog::set_level(spdlog::level::info);
  CHECK_FALSE(fs::exists(task_dir / "run" / "checkpoints" / "best.pt"));
}

TEST_CASE("trainer: a checkpoint that cannot be written is an error naming it; the previous one stays",
          "[model]") {
  // write_atomic's temporary beside last.pt made unwritable (a directory of its name) stands in
  // for a full disk: the save fails with DataError naming the file (exit 2), and the last.pt
  // written before is untouched, with no partial file left.
  auto dir = recsys::testing::temp_dir("retrieval_checkpoint_write");
  auto e = recsys::train::parse_experiment(tiny_config({"train.checkpoints=true"}));
  auto task = e.build_task(e.seed);
  recsys::train::Trainer trainer(*task, e.trainer, recsys::train::RunDir(dir / "run"), e.config, e.seed);
  spdlog::set_level(spdlog::level::off);
  trainer.state().step = 1;
  trainer.validate();
  const auto last = dir / "run" / "checkpoints" / "last.pt";
  REQUIRE(fs::exists(last));
  std::ifstream before_in(last, std::ios::binary);
  const std::string before((std::istreambuf_iterator<char>(before_in)), {});
  auto blocker = last;
  blocker += ".tmp" + std::to_string(::getpid());
  fs::create_directories(blocker);
  trainer.state().step = 2;
  CHECK_THROWS_WITH(trainer.validate(), Catch::Contains("last.pt: cannot write the checkpoint"));
  spdlog::set_level(spdlog::level::info);
  std::ifstream after_in(last, std::ios::binary);
  CHECK(std::string((std::istreambuf_iterator<char>(after_in)), {}) == before);
  fs::remove_all(blocker);
  for (auto& f : fs::directory_iterator(dir / "run" / "checkpoints"))
    CHECK(f.path().filename().string().find(".tmp") == std::string::npos);
}

TEST_CASE("unique_bags finds each distinct row once, in order of appearance", "[model]") {
  // Rows [3 0 1], [3 0 0], [1 3 0], [3 0 1], [3 0 0]: order matters within a bag's row.
  auto ids = torch::tensor({3L, 0L, 1L, 3L, 0L, 0L, 1L, 3L, 0L, 3L, 0L, 1L, 3L, 0L, 0L},
                           torch::kInt64).view({5, 3});
  auto u = recsys::models::unique_bags(ids);
  CHECK(torch::equal(u.first, torch::tensor({0L, 1L, 2L})));
  CHECK(torch::equal(u.inverse, torch::tensor({0L, 1L, 2L, 0L, 1L})));
  // Many rows, few bags.
  auto many = torch::randint(0, 3, {5000, 2}, torch::kInt64);
  auto m = recsys::models::unique_bags(many);
  CHECK(m.first.size(0) == 9);
  CHECK(torch::equal(many.index_select(0, m.first).index_select(0, m.inverse), many));
  auto single = recsys::models::unique_bags(torch::tensor({7L, 7L, 2L}));
  CHECK(torch::equal(single.inverse, torch::tensor({0L, 0L, 1L})));
  // A nearly full table (the smallest: 16 slots for 8 rows): distinct rows collide often and
  // must be told apart by comparing them. Every row distinct, then every row twice.
  for (int trial = 0; trial < 50; ++trial) {
    auto distinct = torch::randperm(1000, torch::kInt64).narrow(0, 0, 16).view({8, 2});
    auto d = recsys::models::unique_bags(distinct);
    CHECK(torch::equal(d.inverse, torch::arange(8, torch::kInt64)));
    auto twice = torch::cat({distinct.narrow(0, 0, 4), distinct.narrow(0, 0, 4)}, 0);
    auto t = recsys::models::unique_bags(twice);
    CHECK(torch::equal(t.inverse, torch::tensor({0L, 1L, 2L, 3L, 0L, 1L, 2L, 3L})));
  }
}

TEST_CASE("unique_rows: rows are equal only when equal in every column", "[model]") {
  // Item ids, a bag per row and a scalar key: rows 0, 3 and 5 are equal in all three; row 1
  // equals row 0 in its id and bag but not its key, row 2 in its id and key but not its bag.
  auto id = torch::tensor({4L, 4L, 4L, 4L, 9L, 4L});
  auto bag = torch::tensor({1L, 2L, 1L, 2L, 2L, 1L, 1L, 2L, 1L, 2L, 1L, 2L}).view({6, 2});
  auto key = torch::tensor({0L, 5L, 0L, 0L, 0L, 0L});
  auto u = recsys::models::unique_rows({id, bag, key});
  CHECK(torch::equal(u.first, torch::tensor({0L, 1L, 2L, 4L})));
  CHECK(torch::equal(u.inverse, torch::tensor({0L, 1L, 2L, 0L, 3L, 0L})));
  // Random rows over few values: reconstructing every column from the distinct rows.
  recsys::testing::seed(12);
  auto c1 = torch::randint(0, 3, {4000}, torch::kInt64);
  auto c2 = torch::randint(0, 2, {4000, 3}, torch::kInt64);
  auto m = recsys::models::unique_rows({c1, c2});
  CHECK(m.first.size(0) == 24);
  CHECK(torch::equal(c1.index_select(0, m.first).index_select(0, m.inverse), c1));
  CHECK(torch::equal(c2.index_select(0, m.first).index_select(0, m.inverse), c2));
  CHECK_THROWS_WITH(recsys::models::unique_rows({c1, c2.narrow(0, 0, 10)}),
                    Catch::Contains("every column must be"));
  CHECK_THROWS_WITH(recsys::models::unique_rows({}), Catch::Contains("no columns"));
}

TEST_CASE("Tower: projected rows and distinct bags compute the plain tower's function and gradients",
          "[model]") {
  // Bags with padding, mean and sum pooling, a single-valued id, a large vocabulary (direct)
  // and a numeric feature, and two features with few distinct bags in a large vocabulary (a
  // popular id, a masked bag), in float64 so that only the summation order differs.
  std::vector<EmbeddingFeature> fs{{"id", 500, 6, Pooling::kMean, false},
                                   {"cats", 9, 8, Pooling::kMean, false},
                                   {"tags", 7, 5, Pooling::kSum, false},
                                   {"price", 0, 3, Pooling::kMean, true},
                                   {"city", 4, 2, Pooling::kMean, false},
                                   {"popular", 1000, 8, Pooling::kMean, false},
                                   {"keywords", 2000, 8, Pooling::kMean, false}};
  for (bool sparse : {true, false}) {
    INFO("sparse " << sparse);
    recsys::testing::seed(11);
    TowerOptions o(fs, {12, 5});
    o.sparse(sparse);
    Tower fast(TowerOptions(o).project_small_vocabularies(true));
    Tower plain(TowerOptions(o).project_small_vocabularies(false).fused_lookup(false).fused_mlp(false));
    fast->to(torch::kFloat64);
    plain->to(torch::kFloat64);
    {
      torch::NoGradGuard g;
      auto src = fast->named_parameters();
      for (auto& kv : plain->named_parameters()) kv.value().copy_(src[kv.key()]);
    }
    const int64_t B = 60;
    auto id = torch::randint(1, 500, {B, 1}, torch::kInt64);
    auto cats = torch::randint(0, 9, {B, 3}, torch::kInt64);  // 0 = padding
    cats.select(0, 0).zero_();                                 // an all-padding bag
    auto tags = torch::randint(0, 7, {B, 2}, torch::kInt64);
    auto price = torch::randn({B, 1}, torch::kFloat64);
    auto city = torch::randint(1, 3, {B, 1}, torch::kInt64);  // rows 1..2 used; row 3 never
    auto popular = torch::randint(1, 6, {B, 1}, torch::kInt64);  // 5 distinct ids
    // Keyword bags: each row's own bag in one half, a masked (default, id 1) bag in the other.
    auto keywords = torch::randint(2, 2000, {B, 4}, torch::kInt64);
    keywords.narrow(0, 0, B / 2).copy_(keywords.narrow(0, B / 2, B / 2));
    keywords.narrow(0, 0, B / 4).fill_(0).select(1, 0).fill_(1);
    keywords.narrow(0, B / 2 + B / 4, B / 4).fill_(0).select(1, 0).fill_(1);
    keywords[20][3] = 0;  // padding inside a bag
    std::vector<torch::Tensor> in{id, cats, tags, price, city, popular, keywords};
    // As ints: Catch prints vectors of them.
    auto paths = [&](Tower& t) {
      std::vector<int> v;
      for (auto p : t->first_layer_paths(in)) v.push_back(static_cast<int>(p));
      return v;
    };
    using P = recsys::models::FirstLayerPath;
    const int direct = static_cast<int>(P::kDirect), rows = static_cast<int>(P::kUsedRows),
              bags = static_cast<int>(P::kUniqueBags);
    CHECK(paths(fast) == std::vector<int>{direct, rows, rows, direct, rows, bags, bags});
    CHECK(paths(plain) == std::vector<int>(7, direct));

    auto weights = torch::randn({B, 5}, torch::kFloat64);
    auto a = fast->forward(in), b = plain->forward(in);
    require_close(a, b, 1e-12, 1e-12);
    (a * weights).sum().backward();
    (b * weights).sum().backward();
    auto pf = fast->named_parameters(), pp = plain->named_parameters();
    for (auto& kv : pp) {
      INFO(kv.key());
      auto gf = pf[kv.key()].grad(), gp = kv.value().grad();
      REQUIRE(gf.defined());
      REQUIRE(gp.defined());
      CHECK(gf.is_sparse() == gp.is_sparse());  // the optimizer sees the same kind of gradient
      auto df = gf.is_sparse() ? gf.coalesce().to_dense() : gf;
      auto dp = gp.is_sparse() ? gp.coalesce().to_dense() : gp;
      require_close(df, dp, 1e-12, 1e-12);
    }
    // int32 ids take the plain embedding path: those features stay direct, same function.
    {
      torch::NoGradGuard g;
      std::vector<torch::Tensor> in32 = in;
      in32[1] = cats.to(torch::kInt32);
      in32[5] = popular.to(torch::kInt32);
      std::vector<int> v;
      for (auto p : fast->first_layer_paths(in32)) v.push_back(static_cast<int>(p));
      CHECK(v == std::vector<int>{direct, direct, rows, direct, rows, direct, bags});
      require_close(fast->forward(in32), plain->forward(in32), 1e-12, 1e-12);
      require_close(fast->forward(in32), plain->forward(in), 1e-12, 1e-12);
    }
    // Rows the batch did not touch get no sparse gradient entries (lazy optimizer updates).
    if (sparse) {
      auto g = pf["encoder.emb_city"].grad().coalesce();
      auto rows = g.indices().select(0, 0);
      CHECK((rows == 3).sum().item<int64_t>() == 0);
    }
  }
}

namespace {

/// The training losses of the tiny retrieval config with `overrides`, 6 steps, no checkpoints.
std::vector<double> train_losses(const std::string& name, std::vector<std::string> overrides) {
  auto dir = recsys::testing::temp_dir(name);
  overrides.push_back("train.max_steps=6");
  overrides.push_back("train.checkpoints=false");
  auto e = recsys::train::parse_experiment(tiny_config(overrides));
  recsys::train::run_experiment(e, recsys::train::RunDir(dir / "run"));
  std::vector<double> l;
  for (auto& line : read_lines(dir / "run" / "metrics.jsonl"))
    if (line.contains("train_loss")) l.push_back(line["train_loss"].get<double>());
  return l;
}

}  // namespace

TEST_CASE("retrieval task: one batched item-tower pass trains as separate passes", "[model]") {
  // Positives, mixed negatives and both SSL views through one pass or four: the same losses at
  // every step (float rounding apart).
  spdlog::set_level(spdlog::level::warn);
  std::vector<std::vector<double>> losses;
  for (const char* batched : {"true", "false"})
    losses.push_back(train_losses(std::string("retrieval_batched_") + batched,
                                  {std::string("model.batch_item_passes=") + batched,
                                   "loss.mixed_negatives=16", "ssl.alpha=0.5",
                                   R"(ssl.augment=[{"type":"complementary"}])"}));
  spdlog::set_level(spdlog::level::info);
  REQUIRE(losses[0].size() == 6);
  REQUIRE(losses[1].size() == 6);
  for (size_t i = 0; i < 6; ++i) CHECK(losses[0][i] == Approx(losses[1][i]).epsilon(1e-4));
}

TEST_CASE("retrieval task: the staged step trains as forward and backward", "[model]") {
  // model.staged_step at 2 threads: the towers' forwards and backwards side by side
  // (train::run_staged), the same losses at every step as the one-graph step (float rounding
  // apart), with extra negatives, spread-out and an SSL projection head (a parameter the loss
  // uses directly).
  spdlog::set_level(spdlog::level::warn);
  std::vector<std::vector<double>> losses;
  for (const char* staged : {"true", "false"})
    losses.push_back(train_losses(std::string("retrieval_staged_") + staged,
                                  {std::string("model.staged_step=") + staged, "train.threads=2",
                                   "loss.mixed_negatives=16", "loss.spread_out=0.1",
                                   "ssl.alpha=0.5", "ssl.projection=[8]",
                                   R"(ssl.augment=[{"type":"complementary"}])"}));
  spdlog::set_level(spdlog::level::info);
  REQUIRE(losses[0].size() == 6);
  REQUIRE(losses[1].size() == 6);
  for (size_t i = 0; i < 6; ++i) CHECK(losses[0][i] == Approx(losses[1][i]).epsilon(1e-4));
}

TEST_CASE("retrieval task: distinct positives train as the batch row by row", "[model]") {
  // Popular items repeat within a batch of 64 out of 300: with model.distinct_positives they go
  // through the item tower once and count with their multiplicity in the softmax. The same
  // losses at every step, with and without accidental-hit removal, mixed negatives, SSL and
  // spread-out (over the positives row by row).
  spdlog::set_level(spdlog::level::warn);
  for (const char* hits : {"true", "false"}) {
    std::vector<std::vector<double>> losses;
    for (const char* distinct : {"true", "false"})
      losses.push_back(train_losses(std::string("retrieval_distinct_") + distinct + hits,
                                    {std::string("model.distinct_positives=") + distinct,
                                     std::string("loss.remove_accidental_hits=") + hits,
                                     "loss.mixed_negatives=16", "loss.spread_out=0.1",
                                     "ssl.alpha=0.5", R"(ssl.augment=[{"type":"complementary"}])"}));
    INFO("remove_accidental_hits " << hits);
    REQUIRE(losses[0].size() == 6);
    REQUIRE(losses[1].size() == 6);
    for (size_t i = 0; i < 6; ++i) CHECK(losses[0][i] == Approx(losses[1][i]).epsilon(1e-4));
  }
  spdlog::set_level(spdlog::level::info);
}

TEST_CASE("retrieval task: distinct positives stay off where rows are not independent", "[model]") {
  // Dropout draws a mask per row and Dice normalises with batch statistics: merging repeated
  // positives would change the function, so model.distinct_positives must leave the batch as it
  // is. Then the flag changes nothing: bit-identical losses.
  spdlog::set_level(spdlog::level::warn);
  for (const char* setting : {"model.dropout=0.2", R"(model.activation="dice")"}) {
    std::vector<std::vector<double>> losses;
    for (const char* distinct : {"true", "false"})
      losses.push_back(train_losses(std::string("retrieval_rows_dependent_") + distinct,
                                    {std::string("model.distinct_positives=") + distinct, setting}));
    INFO(setting);
    REQUIRE(losses[0].size() == 6);
    CHECK(losses[0] == losses[1]);
  }
  spdlog::set_level(spdlog::level::info);
}

TEST_CASE("retrieval task: an empty validation split names the split key that emptied it", "[model]") {
  auto path_of_error = [](const std::vector<std::string>& overrides) -> std::string {
    auto e = recsys::train::parse_experiment(tiny_config(overrides));
    try {
      e.build_task(e.seed);
    } catch (const recsys::ConfigError& err) {
      INFO(err.what());
      CHECK(std::string(err.what()).find("validation split is empty") != std::string::npos);
      return err.path();
    }
    return "";
  };
  // Every synthetic user has at most 30 positives: all of them stay in training.
  CHECK(path_of_error({"data.split.min_positives=1000"}) == "data.split.min_positives");
  CHECK(path_of_error({"data.split.valid_fraction=0"}) == "data.split.valid_fraction");
}

namespace {

/// Tensors of a checkpoint file by dotted name: a module's children are nested archives
/// ("model.user_tower.mlp..."), the trainer's and optimizer's entries flat ("optimizer.s1.0").
std::map<std::string, torch::Tensor> checkpoint_tensors(const fs::path& file, const std::vector<std::string>& names,
                                                        bool nested) {
  std::map<std::string, torch::Tensor> out;
  for (auto& n : names) {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    std::string rest = n;
    for (size_t dot; nested && (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
      torch::serialize::InputArchive child;
      REQUIRE(archive.try_read(rest.substr(0, dot), child));
      archive = std::move(child);
    }
    torch::Tensor t;
    INFO(n);
    REQUIRE(archive.try_read(rest, t));
    out[n] = t;
  }
  return out;
}

std::vector<Json> valid_records(const fs::path& metrics) {
  std::vector<Json> out;
  for (auto& r : read_lines(metrics))
    if (r["split"] == "valid") out.push_back(r);
  return out;
}

}  // namespace

TEST_CASE("trainer: a run stopped by max_steps and resumed ends exactly as an uninterrupted one", "[model][resume]") {
  spdlog::set_level(spdlog::level::err);
  auto dir = recsys::testing::temp_dir("retrieval_resume");
  // SSL on: its views draw from the data stream's generator, which the resumed run must replay.
  const std::vector<std::string> base = {
      "train.early_stopping.patience=0", "ssl.alpha=0.5",
      "ssl.augment=[{\"type\":\"correlated_mask\",\"fraction\":0.5},{\"type\":\"dropout\",\"p\":0.5}]"};
  auto config = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), base.begin(), base.end());
    return tiny_config(extra);
  };
  // Validation every 4 steps; per epoch; or never before the end (the run validates once at its
  // end, and the stopped run's end-of-run validation must be forgotten by the resumed one).
  for (int64_t eval_every : {4, 0, 1000}) {
    DYNAMIC_SECTION("eval_every " << eval_every) {
      const std::string ev = "train.eval_every=" + std::to_string(eval_every);
      auto full_dir = dir / ("full" + std::to_string(eval_every));
      auto full = recsys::train::run_experiment(recsys::train::parse_experiment(config({ev})),
                                                recsys::train::RunDir(full_dir));
      const int64_t per_epoch = full["steps"].get<int64_t>() / 2;
      REQUIRE(per_epoch >= 8);
      // Mid-epoch at a validation step, or exactly at the first epoch's end (per-epoch validation,
      // whose checkpoint is written by the epoch-end validation and must not validate twice).
      const int64_t stop = eval_every > 0 ? 4 * (per_epoch / 8) : per_epoch;
      auto part_dir = dir / ("part" + std::to_string(eval_every));
      recsys::train::run_experiment(
          recsys::train::parse_experiment(config({ev, "train.max_steps=" + std::to_string(stop)})),
          recsys::train::RunDir(part_dir));
      auto resumed = recsys::train::run_experiment(recsys::train::parse_experiment(config({ev})),
                                                   recsys::train::RunDir(part_dir), /*resume=*/true);
      CHECK(resumed["steps"] == full["steps"]);
      CHECK(resumed["best_step"] == full["best_step"]);
      CHECK(resumed["metrics"] == full["metrics"]);
      CHECK(valid_records(part_dir / "metrics.jsonl") == valid_records(full_dir / "metrics.jsonl"));
      // Bit for bit: the same updates in the same order on one thread.
      auto e = recsys::train::parse_experiment(config({ev}));
      auto task = e.build_task(e.seed);
      std::vector<std::string> names;
      for (auto& p : task->module().named_parameters()) names.push_back(p.key());
      auto a = checkpoint_tensors(full_dir / "checkpoints" / "last.pt", names, true);
      auto b = checkpoint_tensors(part_dir / "checkpoints" / "last.pt", names, true);
      for (auto& n : names) {
        INFO(n);
        CHECK(torch::equal(a[n], b[n]));
      }
      auto sa = checkpoint_tensors(full_dir / "checkpoints" / "last.pt", {"optimizer.s1.0", "trainer.gen_state"}, false);
      auto sb = checkpoint_tensors(part_dir / "checkpoints" / "last.pt", {"optimizer.s1.0", "trainer.gen_state"}, false);
      CHECK(torch::equal(sa["optimizer.s1.0"], sb["optimizer.s1.0"]));
      CHECK(torch::equal(sa["trainer.gen_state"], sb["trainer.gen_state"]));
    }
  }
  spdlog::set_level(spdlog::level::info);
}

TEST_CASE("trainer: a run cut mid-epoch by max_steps forgets its cut validation when resumed further",
          "[model][resume]") {
  // Validation per epoch with early stopping: a run cut by max_steps inside an epoch validates
  // at its cut (to pick a best state), which a longer run would not do. Resumed past the cut, it
  // must go back to the bookkeeping and best.pt from before that validation: the same steps,
  // best step, metrics, validation records and parameters as the uninterrupted run.
  spdlog::set_level(spdlog::level::err);
  auto dir = recsys::testing::temp_dir("retrieval_resume_cut");
  const std::vector<std::string> base = {"train.checkpoints=true", "train.epochs=12", "train.eval_every=0",
                                         "train.early_stopping.patience=2", "train.optimizer.lr=0.03"};
  auto config = [&](int64_t max_steps) {
    auto o = base;
    o.push_back("train.max_steps=" + std::to_string(max_steps));
    return recsys::train::parse_experiment(tiny_config(o));
  };
  auto full = recsys::train::run_experiment(config(400), recsys::train::RunDir(dir / "full"));
  const int64_t steps = full["steps"].get<int64_t>();
  REQUIRE(steps < 400);  // early stopping ended it
  const auto records = valid_records(dir / "full" / "metrics.jsonl");
  REQUIRE(records.size() >= 6);
  const int64_t per_epoch = records.front()["step"].get<int64_t>();
  // Inside the second epoch, inside the fifth, and inside the last (whose cut validation is the
  // second without improvement: early stopping ends the cut run there).
  for (int64_t cut : {per_epoch + per_epoch / 2, 4 * per_epoch + 3, steps - 6}) {
    REQUIRE(cut % per_epoch != 0);
    INFO("cut at step " << cut);
    const auto part = dir / ("part" + std::to_string(cut));
    auto stopped = recsys::train::run_experiment(config(cut), recsys::train::RunDir(part));
    REQUIRE(stopped["steps"] == cut);
    // Resumed at the same limit: the cut run's own end, its cut validation included.
    auto again = recsys::train::run_experiment(config(cut), recsys::train::RunDir(part), /*resume=*/true);
    CHECK(again["best_step"] == stopped["best_step"]);
    CHECK(again["metrics"] == stopped["metrics"]);
    auto resumed = recsys::train::run_experiment(config(400), recsys::train::RunDir(part), /*resume=*/true);
    CHECK(resumed["steps"] == full["steps"]);
    CHECK(resumed["best_step"] == full["best_step"]);
    CHECK(resumed["metrics"] == full["metrics"]);
    CHECK(valid_records(part / "metrics.jsonl") == valid_records(dir / "full" / "metrics.jsonl"));
    CHECK_FALSE(fs::exists(part / "checkpoints" / "best_before_cut.pt"));
    auto e = config(400);
    auto task = e.build_task(e.seed);
    std::vector<std::string> names;
    for (auto& p : task->module().named_parameters()) names.push_back(p.key());
    for (const char* file : {"last.pt", "best.pt"}) {
      auto a = checkpoint_tensors(dir / "full" / "checkpoints" / file, names, true);
      auto b = checkpoint_tensors(part / "checkpoints" / file, names, true);
      for (auto& n : names) {
        INFO(file << " " << n);
        CHECK(torch::equal(a[n], b[n]));
      }
    }
  }
  spdlog::set_level(spdlog::level::info);
}

TEST_CASE("trainer: resume refuses a run directory without a checkpoint", "[model][resume]") {
  spdlog::set_level(spdlog::level::err);
  auto dir = recsys::testing::temp_dir("retrieval_resume_none");
  CHECK_THROWS_AS(recsys::train::run_experiment(recsys::train::parse_experiment(tiny_config({})),
                                                recsys::train::RunDir(dir / "empty"), /*resume=*/true),
                  recsys::DataError);
  spdlog::set_level(spdlog::level::info);
}

TEST_CASE("retrieval task: temperatures below 1e-6 are config errors naming the key", "[model]") {
  // Scores are cosines / temperature; the masks of accidental hits (-1e9) must stay far below.
  for (auto [override, key] : {std::pair{"loss.temperature=1e-9", "loss.temperature"},
                               std::pair{"loss.temperature=0", "loss.temperature"},
                               std::pair{"ssl.temperature=-1", "ssl.temperature"}}) {
    INFO(override);
    try {
      // Checked while the experiment is parsed or, at the latest, when its task is built.
      auto e = recsys::train::parse_experiment(tiny_config({override}));
      e.build_task(e.seed);
      FAIL("expected a ConfigError");
    } catch (const recsys::ConfigError& err) {
      CHECK(err.path() == key);
      CHECK(std::string(err.what()).find("at least 1e-6") != std::string::npos);
    }
  }
  auto ok = recsys::train::parse_experiment(tiny_config({"loss.temperature=1e-6"}));
  CHECK_NOTHROW(ok.build_task(ok.seed));
}

TEST_CASE("trainer: a misspelt early-stopping metric is a config error before training", "[model]") {
  spdlog::set_level(spdlog::level::err);
  auto dir = recsys::testing::temp_dir("retrieval_metric_typo");
  auto e = recsys::train::parse_experiment(tiny_config({"train.early_stopping.metric=\"recal@50\""}));
  try {
    recsys::train::run_experiment(e, recsys::train::RunDir(dir / "run"));
    FAIL("expected a ConfigError");
  } catch (const recsys::ConfigError& err) {
    CHECK(err.path() == "train.early_stopping.metric");
    CHECK(std::string(err.what()).find("recall@50/tail") != std::string::npos);  // the known names
  }
  spdlog::set_level(spdlog::level::info);
  CHECK_FALSE(fs::exists(dir / "run" / "metrics.jsonl"));  // nothing trained or validated
  // Every name the task lists is one it reports.
  auto ok = recsys::train::parse_experiment(tiny_config({"train.epochs=1", "train.early_stopping.metric=\"ndcg@10/head\""}));
  CHECK_NOTHROW(recsys::train::run_experiment(ok, recsys::train::RunDir()));
}
