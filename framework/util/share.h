#pragma once
#include <atomic>
#include <cstdint>
#include <functional>

// Work sharing between threads that run independent parts side by side (train::run_staged's
// branches, one intra-op thread each). A thread that has finished its own parts does not wait
// idle at the join: it takes chunks of the products and blockwise kernels the other parts are
// still running. A chunked operation (util::shared_for) cuts its work into the same chunks
// whether or not a helper takes some, and each chunk writes only its own outputs, so the results
// do not depend on which thread ran which chunk.
namespace recsys::util {

/// The threads of one side-by-side run. Each member thread registers itself (Member), runs its
/// own parts, marks each one finished (part_finished), and then helps (help_until_finished)
/// until every part of the group has finished.
class ShareGroup {
 public:
  /// `parts` parts, run by `threads` threads (the intra-op thread count the parts' chunked
  /// operations cut their work for, as they would outside a parallel region).
  ShareGroup(int64_t parts, int64_t threads);
  ShareGroup(const ShareGroup&) = delete;
  ShareGroup& operator=(const ShareGroup&) = delete;

  /// Registers the calling thread as a member for its lifetime (work it runs may share chunks);
  /// restores the thread's previous group (none) on destruction.
  class Member {
   public:
    explicit Member(ShareGroup& group);
    ~Member();
    Member(const Member&) = delete;
    Member& operator=(const Member&) = delete;

   private:
    ShareGroup* previous_;
  };

  /// One of the group's parts has finished (whether or not it threw).
  void part_finished();
  /// Runs posted chunks until every part has finished.
  void help_until_finished();
  int64_t threads() const { return threads_; }

 private:
  friend bool shared_for(int64_t, const std::function<void(int64_t)>&);
  struct Job;
  bool help_once();

  const int64_t threads_;
  std::atomic<int64_t> unfinished_;
  std::atomic<Job*> job_{nullptr};
  std::atomic<int> inside_{0};  // helpers between reading job_ and leaving its job
};

/// Runs fn(i) for each i in [0, n) when the calling thread runs a part of a ShareGroup (and is
/// not itself running a shared chunk): on this thread, and on any member thread that has
/// finished its own parts meanwhile. Returns once every chunk has run; the first exception a
/// chunk threw is rethrown then. Returns false without running anything outside a group, or
/// when sharing is switched off (set_work_sharing), so the caller takes its usual path.
bool shared_for(int64_t n, const std::function<void(int64_t)>& fn);

/// fn(i) for each i in [0, n): shared_for inside a side-by-side part, else across the intra-op
/// threads (at::parallel_for, one index at a time). For work already cut into a fixed number of
/// chunks that each write only their own outputs.
void for_each_chunk(int64_t n, const std::function<void(int64_t)>& fn);

/// at::parallel_for(begin, end, grain, f) for a loop whose iterations write disjoint outputs
/// (any split gives the same results): inside a side-by-side part, the range in up to
/// `max_chunks` chunks of at least `grain` iterations that a helper may take (shared_for);
/// elsewhere ATen's split across the intra-op threads.
void parallel_for_shared(int64_t begin, int64_t end, int64_t grain,
                         const std::function<void(int64_t, int64_t)>& f, int64_t max_chunks = 4);

/// The thread count the calling thread's group cuts work for; 0 where shared_for would refuse
/// (outside a group, inside a shared chunk, or with sharing switched off).
int64_t shared_threads();

/// Process-wide switch (default on): off, shared_for refuses (returns false) and the parts' work
/// runs as before, each operation on its own thread (`recsys bench --paired work_sharing`).
void set_work_sharing(bool on);
bool work_sharing_enabled();

}  // namespace recsys::util
