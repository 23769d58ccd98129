#include "framework/train/prefetch.h"

namespace recsys::train {

PrefetchStream::PrefetchStream(Producer producer, int64_t depth)
    : producer_(std::move(producer)), depth_(static_cast<size_t>(std::max<int64_t>(depth, 1))),
      inline_(depth <= 0) {
  if (!inline_) thread_ = std::thread([this] { run(); });
}

PrefetchStream::~PrefetchStream() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PrefetchStream::run() {
  try {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [this] { return stop_ || queue_.size() < depth_; });
        if (stop_) return;
      }
      auto batch = producer_();
      std::lock_guard<std::mutex> lock(mutex_);
      if (!batch) {
        done_ = true;
        cv_.notify_all();
        return;
      }
      queue_.push_back(std::move(batch));
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
    done_ = true;
    cv_.notify_all();
  }
}

std::unique_ptr<Batch> PrefetchStream::next() {
  if (inline_) return producer_();
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return !queue_.empty() || done_; });
  if (!queue_.empty()) {
    auto batch = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    return batch;
  }
  if (error_) std::rethrow_exception(error_);
  return nullptr;
}

}  // namespace recsys::train
