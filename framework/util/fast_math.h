#pragma once
// Elementwise float functions written so that GCC vectorises the loops that call them (plain
// arithmetic and a bit cast; no libm call; the file calling them is compiled with
// -fno-math-errno -fno-trapping-math, see RECSYS_KERNEL_SOURCES in CMakeLists.txt). Used by the hand-written CPU kernels (softmax
// cross-entropy, the packed GRU's gates). Accuracy: within 2 ulp of expf over the whole range
// (tests/framework/util/fast_math_test.cpp checks it against float64 std::exp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace recsys::fast {

/// e^x. Below -87 it returns 0 (e^-87 is about 1.6e-38, near the smallest normal float); above
/// 88 it saturates at e^88. NaN in, NaN out.
inline float exp(float x) {
  // e^x = 2^k e^r with k = round(x / ln 2) and r = x - k ln 2 in [-ln2/2, ln2/2]; ln 2 is split
  // in two (Cody and Waite) so that k ln 2 is exact enough; e^r by its Taylor series to r^7
  // (truncation error below 5e-9 relative). Rounding by adding and subtracting 1.5 * 2^23.
  const float xc = std::min(std::max(x, -87.0f), 88.0f);  // NaN stays NaN
  const float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - kf * 0.693359375f) + kf * 2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float kn = kf == kf ? kf : 0.0f;  // NaN: any exponent will do, p is NaN already
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(kn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = p * scale;
  return x < -87.0f ? 0.0f : y;
}

/// 1 / (1 + e^-x).
inline float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }

/// tanh(x) = 2 sigmoid(2x) - 1, written as 1 - 2 / (e^{2x} + 1) (exact 0 at 0 is not needed).
inline float tanh(float x) { return 1.0f - 2.0f / (exp(2.0f * x) + 1.0f); }

/// float64 versions through libm, so that kernels templated on the scalar type call one name
/// (their float64 instantiations serve as the tests' precise references).
inline double exp(double x) { return std::exp(x); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh(double x) { return std::tanh(x); }

}  // namespace recsys::fast
