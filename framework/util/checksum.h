#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace recsys::util {

/// FNV-1a's offset and prime over 64-bit words (the bytes in 8-byte steps, the tail zero-padded,
/// each block's length mixed in): a checksum of saved state at memory speed, not a cryptographic
/// hash.
class Checksum {
 public:
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      mix(w);
    }
    if (i < n) {
      uint64_t w = 0;
      std::memcpy(&w, p + i, n - i);
      mix(w);
    }
    mix(n);  // the length: "ab" + "c" differs from "a" + "bc"
  }
  /// A named tensor: its name, shape, dtype and bytes (copied to the CPU, made contiguous).
  void add(const std::string& name, const torch::Tensor& value) {
    add(name.data(), name.size());
    auto t = value.detach().to(torch::kCPU).contiguous();
    const auto sizes = t.sizes().vec();
    add(sizes.data(), sizes.size() * sizeof(int64_t));
    const auto dtype = static_cast<int64_t>(t.scalar_type());
    add(&dtype, sizeof dtype);
    add(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
  }
  uint64_t value() const { return h_; }

 private:
  void mix(uint64_t w) { h_ = (h_ ^ w) * 0x100000001b3ULL; }
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

}  // namespace recsys::util
