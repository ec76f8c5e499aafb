// Per-element math of the sliced-Wasserstein loss, shared by the CPU and CUDA kernels.
//
// Semantics (dzsr_kernels/sliced_wasserstein/reference.py): for each sample n and direction k the
// projected rows a = (M u_n)[k] and b = (M v_n)[k] are sorted ascending; the loss is the mean of
// |a_(i) - b_(i)|. Its subgradient with respect to a at the element that landed in sorted slot i
// is sign(a_(i) - b_(i)) (sign(0) = 0, as torch's abs backward), and the negative for b.
//
// The kernels store these signs as int8, already scattered back to the unsorted element order
// (1 byte per element instead of a 4-byte permutation plus the sign), so the backward is one
// matrix product per sample: du_n = (s M)^T sign_u[n], with s = dloss / (N C' L).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DZSR_SW_HD __host__ __device__ __forceinline__
#else
#define DZSR_SW_HD inline
#endif

namespace dzsr {
namespace sw {

template <typename T>
DZSR_SW_HD int8_t sign_of(T d) {
  return static_cast<int8_t>((d > T(0)) - (d < T(0)));
}

// Order-preserving map of IEEE floats onto unsigned integers (negative values have all bits
// flipped, non-negative ones only the sign bit), so an unsigned radix sort sorts the floats
// ascending. -0.0 sorts just before +0.0, which changes no sorted value.
template <typename F>
struct RadixKey;

template <>
struct RadixKey<float> {
  using Bits = uint32_t;
  static inline Bits encode(float x) {
    Bits b;
    std::memcpy(&b, &x, sizeof(b));
    return b ^ ((b >> 31) ? 0xFFFFFFFFu : 0x80000000u);
  }
  static inline float decode(Bits k) {
    Bits b = k ^ ((k >> 31) ? 0x80000000u : 0xFFFFFFFFu);
    float x;
    std::memcpy(&x, &b, sizeof(x));
    return x;
  }
};

template <>
struct RadixKey<double> {
  using Bits = uint64_t;
  static inline Bits encode(double x) {
    Bits b;
    std::memcpy(&b, &x, sizeof(b));
    return b ^ ((b >> 63) ? ~Bits(0) : (Bits(1) << 63));
  }
  static inline double decode(Bits k) {
    Bits b = k ^ ((k >> 63) ? (Bits(1) << 63) : ~Bits(0));
    double x;
    std::memcpy(&x, &b, sizeof(x));
    return x;
  }
};

}  // namespace sw
}  // namespace dzsr
