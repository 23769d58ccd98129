// The models behind the din and dien workloads.
#include "framework/bench/workloads.h"
#include "framework/util/errors.h"

namespace recsys::bench {

std::unique_ptr<Workload> make_din(const CtrShapes& s, torch::Device device, uint64_t seed) {
  throw UsageError("workload din: the DIN model is not merged yet");
}

std::unique_ptr<Workload> make_dien(const CtrShapes& s, torch::Device device, uint64_t seed) {
  throw UsageError("workload dien: the DIEN model is not merged yet");
}

}  // namespace recsys::bench
