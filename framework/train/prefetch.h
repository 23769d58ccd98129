#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "framework/train/task.h"

namespace recsys::train {

/// Runs a batch producer on a background thread, `depth` batches ahead. The producer is called
/// from one thread only, so a seeded producer yields the same sequence as an inline loop.
/// Exceptions thrown by the producer are rethrown from next().
class PrefetchStream : public BatchStream {
 public:
  using Producer = std::function<std::unique_ptr<Batch>()>;
  PrefetchStream(Producer producer, int64_t depth);
  ~PrefetchStream() override;
  std::unique_ptr<Batch> next() override;

 private:
  void run();
  Producer producer_;
  size_t depth_;
  bool inline_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Batch>> queue_;
  bool done_ = false, stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace recsys::train
