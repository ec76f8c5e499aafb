// Per-element math of the sliced-Wasserstein loss, shared by the CPU and CUDA kernels.
//
// Semantics (dzsr_kernels/sliced_wasserstein/reference.py): for each sample n and direction k the
// projected rows a = (M u_n)[k] and b = (M v_n)[k] are sorted ascending as torch.sort sorts them
// (every NaN last, whatever its sign bit; -0.0 equal to +0.0); the loss is the mean of
// |a_(i) - b_(i)|. Its subgradient with respect to a at the element that landed in sorted slot i
// is sign(a_(i) - b_(i)) with torch's sign: sign(0) = 0 and sign(NaN) = 0, so a NaN difference
// (a NaN on either side, or +-Inf against the same infinity) makes the loss NaN and contributes
// a zero gradient, exactly as torch's autograd of abs does; the negative for b.
//
// The kernels store these signs as int8, already scattered back to the unsorted element order
// (1 byte per element instead of a 4-byte permutation plus the sign), so the backward is one
// matrix product per sample: du_n = (s M)^T sign_u[n], with s = dloss / (N C' L).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DZSR_SW_HD __host__ __device__ __forceinline__
#else
#define DZSR_SW_HD inline
#endif

namespace dzsr {
namespace sw {

// Order-preserving map of IEEE floats onto unsigned integers (negative values have all bits
// flipped, non-negative ones only the sign bit), so an unsigned radix sort sorts the floats
// ascending, in torch.sort's order: -0.0 takes +0.0's key (the two are equal, and stay in input
// order in a stable sort) and every NaN, whatever its sign and payload, takes the largest key
// kNaN (after +inf). decode(kNaN) is a NaN; decode of any other key is the value (with -0.0 read
// back as +0.0, which changes no difference or sign).
template <typename F, typename B>
struct RadixKeyOf {
  static_assert(sizeof(F) == sizeof(B), "key and float must have the same width");
  using Bits = B;
  static constexpr Bits kSign = Bits(1) << (8 * sizeof(Bits) - 1);
  static constexpr Bits kNaN = ~Bits(0);
  static DZSR_SW_HD Bits encode(F x) {
    Bits b;
    std::memcpy(&b, &x, sizeof(b));
    b = x == F(0) ? Bits(0) : b;
    const Bits key = b ^ ((b & kSign) ? ~Bits(0) : kSign);
    return x != x ? kNaN : key;
  }
  static DZSR_SW_HD F decode(Bits k) {
    Bits b = k ^ ((k & kSign) ? kSign : ~Bits(0));
    F x;
    std::memcpy(&x, &b, sizeof(x));
    return x;
  }
  // sign(a - b) as torch computes it, from the keys of a and b: 0 when a - b is NaN (a NaN on
  // either side, or equal infinities), else the order of the keys. Exact even where the float
  // subtraction would flush subnormals to zero (CUDA --use_fast_math): a - b == 0 only if a == b.
  static DZSR_SW_HD int8_t sign_of_difference(Bits ka, Bits kb) {
    if (ka == kNaN || kb == kNaN) return 0;
    return static_cast<int8_t>((ka > kb) - (ka < kb));
  }
};

// Bytes of working buffers (projected rows, float copies of the signs) a kernel handles per step:
// `fallback` unless the environment sets DZSR_SW_BLOCK_BYTES (a tuning knob; the tests use it to
// force several blocks in the forward and several chunks in the backward). Host code only.
inline int64_t budget_bytes(int64_t fallback) {
  const char* env = std::getenv("DZSR_SW_BLOCK_BYTES");
  const int64_t bytes = env != nullptr ? std::atoll(env) : 0;
  return bytes > 0 ? bytes : fallback;
}

template <typename F>
struct RadixKey;
template <>
struct RadixKey<float> : RadixKeyOf<float, uint32_t> {};
template <>
struct RadixKey<double> : RadixKeyOf<double, uint64_t> {};

}  // namespace sw
}  // namespace dzsr
