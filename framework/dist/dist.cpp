#include "framework/dist/dist.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cerrno>
#include <cstdlib>
#include <map>

#include "framework/util/errors.h"

namespace recsys::dist {

struct Context::Group {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 4096)
    throw UsageError(std::string(name) + "='" + v + "' is not a rank or world size");
  return static_cast<int>(x);
}

/// Every rank's `x` (the same shape on each), in rank order.
std::vector<torch::Tensor> gather_rows(c10d::ProcessGroupGloo& pg, int world, const torch::Tensor& x) {
  std::vector<std::vector<torch::Tensor>> out(1);
  for (int r = 0; r < world; ++r) out[0].push_back(torch::empty_like(x));
  std::vector<torch::Tensor> in{x};
  pg.allgather(out, in)->wait();
  return out[0];
}

}  // namespace

Context Context::join(int rank, int world, const std::string& store_path, std::chrono::milliseconds timeout) {
  Context c;
  c.rank_ = rank;
  c.world_ = world;
  if (world <= 1) return c;
  if (rank < 0 || rank >= world)
    throw UsageError("rank " + std::to_string(rank) + " is outside a world of " + std::to_string(world));
  auto store = c10::make_intrusive<c10d::FileStore>(store_path, world);
  auto options = c10d::ProcessGroupGloo::Options::create();
  // Loopback: the ranks of a run share this machine.
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  options->timeout = timeout;
  c.group_ = std::make_shared<Group>();
  c.group_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
  return c;
}

bool launched_by_launcher() {
  const char* pid = std::getenv("RECSYS_LAUNCHER_PID");
  return pid != nullptr && *pid != '\0' && std::to_string(::getppid()) == pid;
}

Context Context::from_env(std::chrono::milliseconds timeout) {
  const int world = env_int("RECSYS_WORLD_SIZE", 1);
  if (world <= 1) return Context();
  const char* store = std::getenv("RECSYS_STORE");
  if (store == nullptr || *store == '\0') throw UsageError("RECSYS_WORLD_SIZE is set but RECSYS_STORE is not");
  return join(env_int("RECSYS_RANK", 0), world, store, timeout);
}

void Context::average_gradients(const std::vector<torch::Tensor>& params) {
  if (!active()) return;
  torch::NoGradGuard no_grad;
  auto& pg = *group_->pg;
  // What each rank holds per parameter (0 none, 1 dense, 2 sparse): the ranks must issue the
  // same collectives, and a parameter unused in one rank's batch has no gradient there.
  const int64_t P = static_cast<int64_t>(params.size());
  auto kinds = torch::zeros({P}, torch::kLong);
  auto* k = kinds.data_ptr<int64_t>();
  for (int64_t i = 0; i < P; ++i) {
    const auto& g = params[static_cast<size_t>(i)].grad();
    k[i] = !g.defined() ? 0 : g.is_sparse() ? 2 : 1;
  }
  std::vector<torch::Tensor> kinds_in{kinds};
  pg.allreduce(kinds_in, c10d::AllreduceOptions{c10d::ReduceOp::MAX})->wait();
  const float scale = 1.0f / static_cast<float>(world_);

  // Dense: one flat buffer per dtype.
  std::map<c10::ScalarType, std::vector<int64_t>> dense;
  for (int64_t i = 0; i < P; ++i)
    if (k[i] == 1) dense[params[static_cast<size_t>(i)].scalar_type()].push_back(i);
  for (auto& [dtype, idx] : dense) {
    std::vector<torch::Tensor> flat;
    for (auto i : idx) {
      auto& p = const_cast<torch::Tensor&>(params[static_cast<size_t>(i)]);
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      if (p.grad().is_sparse()) p.mutable_grad() = p.grad().to_dense();
      flat.push_back(p.grad().reshape({-1}));
    }
    std::vector<torch::Tensor> buffer{torch::cat(flat)};
    pg.allreduce(buffer)->wait();
    buffer[0].mul_(scale);
    int64_t offset = 0;
    for (auto i : idx) {
      auto& g = const_cast<torch::Tensor&>(params[static_cast<size_t>(i)]).mutable_grad();
      const int64_t n = g.numel();
      g.copy_(buffer[0].narrow(0, offset, n).view_as(g));
      offset += n;
    }
  }

  // Sparse: every rank's rows of all sparse gradients of one dtype travel together: one gather of
  // the per-parameter row counts, one of the concatenated indices and one of the flattened values
  // (each padded to the longest rank), then each parameter's rows are cut out of every rank's part.
  struct Rows {
    int64_t param, width;
    torch::Tensor indices, values;  // [n], [n * width]
  };
  std::map<c10::ScalarType, std::vector<Rows>> sparse;
  for (int64_t i = 0; i < P; ++i) {
    if (k[i] != 2) continue;
    const auto& p = params[static_cast<size_t>(i)];
    const int64_t width = p.dim() > 1 ? p.numel() / p.size(0) : 1;
    Rows r{i, width, torch::Tensor(), torch::Tensor()};
    const auto& g = p.grad();
    if (g.defined() && g.is_sparse()) {
      TORCH_CHECK(g.sparse_dim() == 1, "dist: sparse gradients must index rows (sparse_dim 1)");
      r.indices = g._indices().reshape({-1}).contiguous();
      r.values = g._values().contiguous().reshape({-1});
    } else if (g.defined()) {  // dense here, sparse elsewhere: every row
      r.indices = torch::arange(p.size(0), torch::kLong);
      r.values = g.contiguous().reshape({-1});
    } else {
      r.indices = torch::empty({0}, torch::kLong);
      r.values = torch::empty({0}, p.options());
    }
    sparse[p.scalar_type()].push_back(std::move(r));
  }
  auto gather = [&](const torch::Tensor& x) { return gather_rows(pg, world_, x); };
  for (auto& [dtype, rows] : sparse) {
    const int64_t S = static_cast<int64_t>(rows.size());
    auto counts = torch::empty({S}, torch::kLong);
    for (int64_t j = 0; j < S; ++j) counts[j] = rows[static_cast<size_t>(j)].indices.size(0);
    auto all_counts = gather(counts);
    // Per rank: its row counts, and the longest index / value buffers any rank sends.
    std::vector<std::vector<int64_t>> n(static_cast<size_t>(world_), std::vector<int64_t>(static_cast<size_t>(S)));
    int64_t longest_i = 0, longest_v = 0;
    for (int r = 0; r < world_; ++r) {
      int64_t ti = 0, tv = 0;
      for (int64_t j = 0; j < S; ++j) {
        n[static_cast<size_t>(r)][static_cast<size_t>(j)] = all_counts[static_cast<size_t>(r)][j].item<int64_t>();
        ti += n[static_cast<size_t>(r)][static_cast<size_t>(j)];
        tv += n[static_cast<size_t>(r)][static_cast<size_t>(j)] * rows[static_cast<size_t>(j)].width;
      }
      longest_i = std::max(longest_i, ti);
      longest_v = std::max(longest_v, tv);
    }
    auto pad_i = torch::zeros({longest_i}, torch::kLong);
    auto pad_v = torch::zeros({longest_v}, torch::TensorOptions().dtype(dtype));
    int64_t oi = 0, ov = 0;
    for (auto& r : rows) {
      pad_i.narrow(0, oi, r.indices.size(0)).copy_(r.indices);
      pad_v.narrow(0, ov, r.values.size(0)).copy_(r.values);
      oi += r.indices.size(0);
      ov += r.values.size(0);
    }
    auto all_i = gather(pad_i);
    auto all_v = gather(pad_v);
    std::vector<int64_t> at_i(static_cast<size_t>(world_), 0), at_v(static_cast<size_t>(world_), 0);
    for (int64_t j = 0; j < S; ++j) {
      const auto& r = rows[static_cast<size_t>(j)];
      auto& p = const_cast<torch::Tensor&>(params[static_cast<size_t>(r.param)]);
      std::vector<torch::Tensor> parts_i, parts_v;
      for (int w = 0; w < world_; ++w) {
        const int64_t m = n[static_cast<size_t>(w)][static_cast<size_t>(j)];
        parts_i.push_back(all_i[static_cast<size_t>(w)].narrow(0, at_i[static_cast<size_t>(w)], m));
        parts_v.push_back(all_v[static_cast<size_t>(w)].narrow(0, at_v[static_cast<size_t>(w)], m * r.width));
        at_i[static_cast<size_t>(w)] += m;
        at_v[static_cast<size_t>(w)] += m * r.width;
      }
      auto indices = torch::cat(parts_i);
      std::vector<int64_t> value_shape{indices.size(0)};
      for (int64_t d = 1; d < p.dim(); ++d) value_shape.push_back(p.size(d));
      auto values = torch::cat(parts_v).view(value_shape).mul_(scale);
      p.mutable_grad() = torch::sparse_coo_tensor(indices.unsqueeze(0), values, p.sizes());
    }
  }
}

namespace {

/// all_gather_rows' autograd: forward gathers, backward sums the whole gradient over the ranks
/// and keeps this rank's rows.
struct GatherRows : torch::autograd::Function<GatherRows> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               c10d::ProcessGroupGloo* pg, int64_t rank, int64_t world) {
    ctx->saved_data["rank"] = rank;
    ctx->saved_data["rows"] = x.size(0);
    ctx->saved_data["pg"] = reinterpret_cast<int64_t>(pg);
    return torch::cat(gather_rows(*pg, static_cast<int>(world), x.contiguous()));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* pg = reinterpret_cast<c10d::ProcessGroupGloo*>(ctx->saved_data["pg"].toInt());
    const int64_t rank = ctx->saved_data["rank"].toInt(), rows = ctx->saved_data["rows"].toInt();
    std::vector<torch::Tensor> g{grads[0].contiguous().clone()};
    pg->allreduce(g)->wait();
    return {g[0].narrow(0, rank * rows, rows), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Context::all_gather_rows(const torch::Tensor& x) {
  if (!active()) return x;
  TORCH_CHECK(x.device().is_cpu(), "dist: all_gather_rows runs on CPU tensors (Gloo)");
  if (!x.requires_grad() || !torch::GradMode::is_enabled())
    return torch::cat(gather_rows(*group_->pg, world_, x.contiguous()));
  return GatherRows::apply(x, group_->pg.get(), rank_, world_);
}

void Context::broadcast(const std::vector<torch::Tensor>& tensors) {
  if (!active()) return;
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    std::vector<torch::Tensor> one{t.is_contiguous() ? t : t.contiguous()};
    group_->pg->broadcast(one)->wait();
    if (!t.is_contiguous()) const_cast<torch::Tensor&>(t).copy_(one[0]);
  }
}

bool Context::broadcast_flag(bool value) {
  if (!active()) return value;
  std::vector<torch::Tensor> flag{torch::full({1}, static_cast<int64_t>(value), torch::kLong)};
  group_->pg->broadcast(flag)->wait();
  return flag[0].item<int64_t>() != 0;
}

bool Context::all_equal(double value) {
  if (!active()) return true;
  std::vector<torch::Tensor> lo{torch::full({1}, value, torch::kFloat64)}, hi{torch::full({1}, value, torch::kFloat64)};
  group_->pg->allreduce(lo, c10d::AllreduceOptions{c10d::ReduceOp::MIN})->wait();
  group_->pg->allreduce(hi, c10d::AllreduceOptions{c10d::ReduceOp::MAX})->wait();
  return lo[0].item<double>() == hi[0].item<double>();
}

int64_t Context::all_max(int64_t value) {
  if (!active()) return value;
  std::vector<torch::Tensor> v{torch::full({1}, value, torch::kLong)};
  group_->pg->allreduce(v, c10d::AllreduceOptions{c10d::ReduceOp::MAX})->wait();
  return v[0].item<int64_t>();
}

void Context::barrier() {
  if (active()) group_->pg->barrier()->wait();
}

namespace {

// The ranks a launcher has running, for its signal handler (async-signal-safe: a fixed array).
constexpr int kMaxRanks = 256;
volatile sig_atomic_t g_ranks = 0;
pid_t g_rank_pids[kMaxRanks];

void forward_signal(int sig) {
  for (int i = 0; i < g_ranks; ++i)
    if (g_rank_pids[i] > 0) ::kill(g_rank_pids[i], sig);
}

void stop_ranks(int except_index) {
  for (int i = 0; i < g_ranks; ++i)
    if (i != except_index && g_rank_pids[i] > 0) ::kill(g_rank_pids[i], SIGTERM);
}

}  // namespace

int launch(int nproc, char** argv, const std::vector<std::string>& extra_args, const std::string& store_path) {
  if (nproc < 1) throw UsageError("--nproc must be at least 1");
  if (nproc > kMaxRanks) throw UsageError("--nproc must be at most " + std::to_string(kMaxRanks));
  ::unlink(store_path.c_str());  // a FileStore left by an earlier run would hold its keys
  std::vector<std::string> args;
  for (char** a = argv; *a != nullptr; ++a) args.emplace_back(*a);
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  struct sigaction forward {};
  forward.sa_handler = forward_signal;
  ::sigemptyset(&forward.sa_mask);
  struct sigaction old_int {}, old_term {};
  ::sigaction(SIGINT, &forward, &old_int);
  ::sigaction(SIGTERM, &forward, &old_term);
  const pid_t launcher = ::getpid();
  g_ranks = 0;
  for (int rank = 0; rank < nproc; ++rank) {
    pid_t pid = ::fork();
    if (pid < 0) {
      stop_ranks(-1);
      throw std::runtime_error("launch: fork failed for rank " + std::to_string(rank));
    }
    if (pid == 0) {
      // A rank ends with its launcher (killed by a scheduler, say) instead of training on alone.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != launcher) ::_exit(143);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::setenv("RECSYS_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("RECSYS_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("RECSYS_STORE", store_path.c_str(), 1);
      // The launcher holds the run directory's lock for its ranks (launched_by_launcher()).
      ::setenv("RECSYS_LAUNCHER_PID", std::to_string(launcher).c_str(), 1);
      std::vector<char*> cargv;
      for (auto& a : args) cargv.push_back(const_cast<char*>(a.c_str()));
      cargv.push_back(nullptr);
      ::execv("/proc/self/exe", cargv.data());
      ::_exit(127);
    }
    g_rank_pids[rank] = pid;
    g_ranks = rank + 1;
  }
  int first_failure = 0, running = nproc;
  while (running > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;  // a forwarded signal
      break;
    }
    int index = -1;
    for (int i = 0; i < nproc; ++i)
      if (g_rank_pids[i] == pid) index = i;
    if (index < 0) continue;
    g_rank_pids[index] = 0;  // reaped: its id may be reused, never signal it again
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && first_failure == 0) {
      first_failure = code;
      stop_ranks(index);  // the others would wait for the failed rank at their next collective
    }
  }
  g_ranks = 0;
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::unlink(store_path.c_str());
  return first_failure;
}

}  // namespace recsys::dist
