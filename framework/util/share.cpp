#include "framework/util/share.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RECSYS_SPIN_PAUSE() _mm_pause()
#else
#define RECSYS_SPIN_PAUSE() std::this_thread::yield()
#endif

namespace recsys::util {

namespace {

std::atomic<bool> g_sharing{true};
thread_local ShareGroup* t_group = nullptr;
thread_local bool t_in_chunk = false;  // a shared chunk runs on this thread: no nested sharing
// A waiting thread's next look: it spins while the wait is short (some tens of microseconds of
// pause instructions), then gives its core up between looks, so that on a loaded machine, where
// the OpenMP wait policy would have put an idle worker to sleep, it does not keep a core from
// another process or from the part it waits for.
class Backoff {
 public:
  void wait() {
    if (++idle_ < kSpinsBeforeYield)
      RECSYS_SPIN_PAUSE();
    else
      std::this_thread::yield();
  }
  void reset() { idle_ = 0; }

 private:
  static constexpr int64_t kSpinsBeforeYield = 2000;
  int64_t idle_ = 0;
};

}  // namespace

// A posted operation: chunks claimed one at a time from `next`.
struct ShareGroup::Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex error_mutex;
  std::exception_ptr error;

  void claim() {
    const bool outer = t_in_chunk;
    t_in_chunk = true;
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      done.fetch_add(1, std::memory_order_release);
    }
    t_in_chunk = outer;
  }
};

ShareGroup::ShareGroup(int64_t parts, int64_t threads) : threads_(threads), unfinished_(parts) {}

ShareGroup::Member::Member(ShareGroup& group) : previous_(t_group) { t_group = &group; }
ShareGroup::Member::~Member() { t_group = previous_; }

void ShareGroup::part_finished() { unfinished_.fetch_sub(1, std::memory_order_acq_rel); }

bool ShareGroup::help_once() {
  // Counted in `inside_` before the job is read: a poster that has withdrawn its job waits
  // until no helper can still hold it (sequentially consistent: a helper that read the job
  // incremented the count before the poster's withdrawal, so the poster sees it).
  inside_.fetch_add(1);
  Job* job = job_.load();
  if (job != nullptr) job->claim();
  inside_.fetch_sub(1);
  return job != nullptr;
}

void ShareGroup::help_until_finished() {
  Backoff backoff;
  while (unfinished_.load(std::memory_order_acquire) > 0) {
    if (help_once())
      backoff.reset();
    else
      backoff.wait();
  }
}

bool shared_for(int64_t n, const std::function<void(int64_t)>& fn) {
  ShareGroup* group = t_group;
  if (group == nullptr || t_in_chunk || !g_sharing.load(std::memory_order_relaxed)) return false;
  ShareGroup::Job job;
  job.fn = &fn;
  job.n = n;
  // One posted job at a time (two threads: only the other one could have posted); if another
  // thread's job is posted, this one runs all its chunks itself.
  ShareGroup::Job* expected = nullptr;
  const bool posted = n > 1 && group->job_.compare_exchange_strong(expected, &job);
  job.claim();
  if (posted) {
    group->job_.store(nullptr);
    for (Backoff backoff; job.done.load(std::memory_order_acquire) < n || group->inside_.load() > 0;)
      backoff.wait();
  }
  if (job.error) std::rethrow_exception(job.error);
  return true;
}

void for_each_chunk(int64_t n, const std::function<void(int64_t)>& fn) {
  if (shared_for(n, fn)) return;
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fn(i);
  });
}

void parallel_for_shared(int64_t begin, int64_t end, int64_t grain,
                         const std::function<void(int64_t, int64_t)>& f, int64_t max_chunks) {
  if (end <= begin) return;
  if (shared_threads() > 1) {
    const int64_t n = end - begin;
    const int64_t chunks = std::max<int64_t>(1, std::min(max_chunks, n / std::max<int64_t>(1, grain)));
    if (chunks > 1 && shared_for(chunks, [&](int64_t c) {
          f(begin + c * n / chunks, begin + (c + 1) * n / chunks);
        }))
      return;
  }
  at::parallel_for(begin, end, grain, f);
}

int64_t shared_threads() {
  return t_group != nullptr && !t_in_chunk && g_sharing.load(std::memory_order_relaxed)
             ? t_group->threads()
             : 0;
}

void set_work_sharing(bool on) { g_sharing = on; }
bool work_sharing_enabled() { return g_sharing.load(); }

}  // namespace recsys::util
