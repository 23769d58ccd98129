// Data-parallel gradient averaging over c10d (Gloo): two forked ranks on loopback, each holding
// half of a batch, against the full batch's gradients computed in one process.
#include <sys/wait.h>
#include <unistd.h>

#include "framework/dist/dist.h"
#include "models/layers/dice.h"
#include "support.h"

namespace {

/// One rank: returns 0 when its averaged gradients match the full batch's, else a code naming
/// the first mismatch (the parent reports it).
int rank_main(int rank, const std::string& store) {
  try {
    at::set_num_threads(1);
    auto ctx = recsys::dist::Context::join(rank, 2, store, std::chrono::seconds(30));
    torch::manual_seed(7);  // the same data and parameters on both ranks
    auto table = torch::randn({50, 4}).requires_grad_();
    auto w = torch::randn({4, 1}).requires_grad_();
    auto b = torch::zeros({1}).requires_grad_();
    auto unused = torch::randn({3}).requires_grad_();  // a gradient on rank 0 only
    auto ids = torch::randint(0, 50, {8, 3});
    auto y = torch::randn({8});
    auto loss_of = [&](const torch::Tensor& i, const torch::Tensor& t) {
      auto e = torch::embedding(table, i, -1, false, /*sparse=*/true).mean(1);
      return (e.mm(w).squeeze(1) + b - t).pow(2).mean();
    };
    // The reference: the whole batch in this process.
    auto ref = torch::autograd::grad({loss_of(ids, y)}, {table, w, b});
    // This rank's half, averaged with the other's.
    auto half = loss_of(ids.narrow(0, 4 * rank, 4), y.narrow(0, 4 * rank, 4));
    if (rank == 0) half = half + 0 * unused.sum();
    half.backward();
    ctx.average_gradients({table, w, b, unused});
    if (!table.grad().is_sparse()) return 10;
    if (!torch::allclose(table.grad().to_dense(), ref[0].to_dense(), 1e-5, 1e-6)) return 11;
    if (!torch::allclose(w.grad(), ref[1], 1e-5, 1e-6)) return 12;
    if (!torch::allclose(b.grad(), ref[2], 1e-5, 1e-6)) return 13;
    if (!unused.grad().defined() || !torch::equal(unused.grad(), torch::zeros({3}))) return 14;
    // Rank 0's values reach every rank; flags and equality checks agree.
    auto x = torch::full({2}, static_cast<float>(rank + 1));
    ctx.broadcast({x});
    if (!torch::equal(x, torch::full({2}, 1.0f))) return 15;
    if (ctx.broadcast_flag(rank == 0) != true) return 16;
    if (!ctx.all_equal(3.5) || ctx.all_equal(rank)) return 17;
    ctx.barrier();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    return 20;
  }
}

/// Two float64 Dice layers over 5 channels with the same random alpha: one local, one whose
/// statistics span the ranks of `ctx`.
std::pair<recsys::models::Dice, recsys::models::Dice> dice_pair(const recsys::dist::Context& ctx) {
  recsys::models::Dice local(recsys::models::DiceOptions(5)), synced(recsys::models::DiceOptions(5));
  local->to(torch::kFloat64);
  synced->to(torch::kFloat64);
  {
    torch::NoGradGuard g;
    local->alpha.copy_(torch::randn({5}, torch::kFloat64));
    synced->alpha.copy_(local->alpha);
  }
  synced->set_sync(ctx);
  return {local, synced};
}

/// One rank of the synchronised Dice test: its half of a batch through a Dice whose statistics
/// span both ranks, against the whole batch through a local Dice in this process.
int dice_rank_main(int rank, const std::string& store) {
  try {
    at::set_num_threads(1);
    auto ctx = recsys::dist::Context::join(rank, 2, store, std::chrono::seconds(30));
    torch::manual_seed(11);
    const auto f64 = torch::kFloat64;
    auto x = (torch::randn({8, 5}, f64) * 2 + 1).requires_grad_();
    auto c = torch::randn({8, 5}, f64);  // a loss that weighs every output differently
    auto [local, synced] = dice_pair(ctx);
    auto y_ref = local->forward(x);
    auto ref = torch::autograd::grad({(y_ref * c).mean()}, {x, local->alpha});
    auto xh = x.detach().narrow(0, 4 * rank, 4).clone().requires_grad_();
    auto yh = synced->forward(xh);
    if (!torch::allclose(yh, y_ref.detach().narrow(0, 4 * rank, 4), 1e-10, 1e-12)) return 30;
    (yh * c.narrow(0, 4 * rank, 4)).mean().backward();
    ctx.average_gradients({synced->alpha});
    if (!torch::allclose(synced->alpha.grad(), ref[1], 1e-10, 1e-12)) return 31;
    // Each rank's rows get the gradient of both ranks' losses; the mean of the two is the
    // whole-batch objective.
    if (!torch::allclose(xh.grad() / 2, ref[0].narrow(0, 4 * rank, 4), 1e-10, 1e-12)) return 32;
    if (!torch::allclose(synced->running_mean, local->running_mean, 1e-12, 1e-14)) return 33;
    if (!torch::allclose(synced->running_var, local->running_var, 1e-12, 1e-14)) return 34;
    // The half's own statistics would give other outputs: the synchronisation is what matches.
    recsys::models::Dice unsynced(recsys::models::DiceOptions(5));
    unsynced->to(f64);
    {
      torch::NoGradGuard g;
      unsynced->alpha.copy_(local->alpha);
    }
    if (torch::allclose(unsynced->forward(xh.detach()), yh.detach(), 1e-4, 1e-6)) return 36;
    synced->eval();  // eval mode uses the running statistics, no collective
    auto ye = synced->forward(xh.detach());
    local->eval();
    if (!torch::allclose(ye, local->forward(x.detach().narrow(0, 4 * rank, 4)), 1e-12, 1e-14)) return 35;

    // 3-D input [B, T, D] and unequal shares (3 and 5 rows): the statistics count every row of
    // every rank. Summed losses, so that both ranks' sum is the whole batch's.
    auto [local3, synced3] = dice_pair(ctx);
    auto x3 = (torch::randn({8, 3, 5}, f64) - 0.5).requires_grad_();
    auto c3 = torch::randn({8, 3, 5}, f64);
    auto y3 = local3->forward(x3);
    auto ref3 = torch::autograd::grad({(y3 * c3).sum()}, {x3, local3->alpha});
    const int64_t r0 = rank == 0 ? 0 : 3, n = rank == 0 ? 3 : 5;
    auto xh3 = x3.detach().narrow(0, r0, n).clone().requires_grad_();
    auto yh3 = synced3->forward(xh3);
    if (!torch::allclose(yh3, y3.detach().narrow(0, r0, n), 1e-10, 1e-12)) return 37;
    (yh3 * c3.narrow(0, r0, n)).sum().backward();
    ctx.average_gradients({synced3->alpha});
    if (!torch::allclose(synced3->alpha.grad() * 2, ref3[1], 1e-10, 1e-12)) return 38;
    if (!torch::allclose(xh3.grad(), ref3[0].narrow(0, r0, n), 1e-10, 1e-12)) return 39;
    if (!torch::allclose(synced3->running_var, local3->running_var, 1e-12, 1e-14)) return 40;
    ctx.barrier();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    return 20;
  }
}

/// Forks two ranks running `main_fn` and checks both exit 0.
template <typename Fn>
void run_two_ranks(const std::string& name, Fn main_fn) {
  auto dir = recsys::testing::temp_dir(name);
  const std::string store = (dir / "store").string();
  pid_t pids[2];
  for (int rank = 0; rank < 2; ++rank) {
    pids[rank] = ::fork();
    REQUIRE(pids[rank] >= 0);
    if (pids[rank] == 0) {
      ::alarm(60);  // a rank stuck in a collective fails the test instead of hanging it
      ::_exit(main_fn(rank, store));
    }
  }
  for (int rank = 0; rank < 2; ++rank) {
    int status = 0;
    REQUIRE(::waitpid(pids[rank], &status, 0) == pids[rank]);
    INFO("rank " << rank << " status " << status);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
}

}  // namespace

TEST_CASE("dist: two ranks' averaged gradients equal the full batch's", "[dist]") {
  run_two_ranks("dist_average", rank_main);
}

TEST_CASE("dist: synchronised Dice on two halves equals Dice on the whole batch", "[dist]") {
  run_two_ranks("dist_dice", dice_rank_main);
}

TEST_CASE("dist: a rank stuck outside a collective fails the others after the timeout", "[dist]") {
  // Rank 1 joins and then never reaches the barrier (it sleeps past the timeout); rank 0's
  // barrier must fail after about the 2 s given, not wait for Gloo's default 30 minutes.
  run_two_ranks("dist_timeout", [](int rank, const std::string& store) {
    try {
      auto ctx = recsys::dist::Context::join(rank, 2, store, std::chrono::seconds(2));
      if (rank == 1) {
        ::sleep(8);
        return 0;
      }
      const auto t0 = std::chrono::steady_clock::now();
      try {
        ctx.barrier();
      } catch (const std::exception&) {
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return waited >= 1.5 && waited < 7 ? 0 : 31;
      }
      return 30;  // the barrier returned although rank 1 never entered it
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
      return 20;
    }
  });
}

TEST_CASE("dist: a plain context makes every collective a no-op", "[dist]") {
  recsys::dist::Context plain;
  CHECK_FALSE(plain.active());
  CHECK(plain.leader());
  auto p = torch::ones({2}).requires_grad_();
  p.sum().backward();
  plain.average_gradients({p});
  CHECK(torch::equal(p.grad(), torch::ones({2})));
  CHECK(plain.broadcast_flag(true));
  CHECK(plain.all_equal(1.0));
}
