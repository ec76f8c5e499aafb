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
template <typename F, typename B>
struct RadixKeyOf {
  static_assert(sizeof(F) == sizeof(B), "key and float must have the same width");
  using Bits = B;
  static constexpr Bits kSign = Bits(1) << (8 * sizeof(Bits) - 1);
  static inline Bits encode(F x) {
    Bits b;
    std::memcpy(&b, &x, sizeof(b));
    return b ^ ((b & kSign) ? ~Bits(0) : kSign);
  }
  static inline F decode(Bits k) {
    Bits b = k ^ ((k & kSign) ? kSign : ~Bits(0));
    F x;
    std::memcpy(&x, &b, sizeof(x));
    return x;
  }
};

template <typename F>
struct RadixKey;
template <>
struct RadixKey<float> : RadixKeyOf<float, uint32_t> {};
template <>
struct RadixKey<double> : RadixKeyOf<double, uint64_t> {};

}  // namespace sw
}  // namespace dzsr
