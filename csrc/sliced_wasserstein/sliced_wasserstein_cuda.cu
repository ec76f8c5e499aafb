// CUDA forward and backward of the sliced-Wasserstein loss
// (torch.ops.dzsr_C.sliced_wasserstein_{forward,backward}; docs/design.md#sliced-wasserstein).
//
// Forward, for u, v (N, C, H, W), proj M (C', C) and L = H*W:
//   projections  P_u = M u_n, P_v = M v_n for every n: one batched GEMM per side (at::matmul,
//                cuBLAS). float32 stays IEEE float32 unless the caller opts into TF32 for all of
//                torch's float32 matrix products (torch.set_float32_matmul_precision("high"));
//                float64 is float64.
//   rows of L <= on-chip capacity (4096 float32, 2048 float64): sort_compare_row_kernel, one block
//                per (sample, direction) row. The block loads the P_u row into shared memory as
//                order-preserving keys (sliced_wasserstein_math.h: NaN last, -0.0 as +0.0) with
//                their positions, sorts it by a stable block-wide LSD radix sort (4-bit digits,
//                kItems slots per thread, the sorted row left in registers), sorts the P_v row
//                the same way (with positions only when v needs a gradient), then sums
//                |a - b| in float64, scatters sign(a - b) to each element's unsorted position in
//                shared memory and writes the int8 sign rows coalesced, and the row's sum.
//   longer rows: torch's device-wide segmented sort of the (N*C', L) rows (u's projection sorted
//                with its permutation and freed before v is projected), then
//                sorted_compare_kernel per (row, chunk of kChunk): |a - b| partial sums and the
//                sign scatter.
//   loss:        finish_loss_kernel sums the float64 partial sums in a fixed order and divides by
//                N C' L (the mean of nothing, NaN, when that is 0).
// Both paths give the same outputs (op.py): the loss and the int8 signs at unsorted positions.
// Ties keep their input order on the on-chip path (a stable sort), so its signs equal those of a
// stable torch.sort exactly; any order of tied slots is a valid subgradient (reference.py).
//
// Backward (CUDA kernel of sliced_wasserstein_backward; the CPU one is backward_any in
// sliced_wasserstein_cpu.cpp): du[n] = proj_scaled^T sign[n], the int8 signs converted to the
// compute dtype for a group of samples at a time and multiplied by one batched GEMM.
//
// Empty inputs (N, C' or L = 0) launch no row kernel: the loss is the mean of nothing, NaN, and
// the signs are empty; C = 0 projects every point to 0.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "common.h"
#include "cuda_launch.h"
#include "sliced_wasserstein/sliced_wasserstein_cuda.h"
#include "sliced_wasserstein/sliced_wasserstein_math.h"

namespace dzsr {
namespace sw {
namespace {

constexpr int kItems = 8;      // row slots per thread of the on-chip sort (< 16: see packed)
constexpr int kDigitBits = 4;  // radix-sort digit
constexpr int kDigits = 1 << kDigitBits;
static_assert(kItems < (1 << kDigitBits), "a thread's count of one digit must fit 4 bits");
constexpr int kThreads = 256;  // threads of the fallback kernel
constexpr int kChunk = 4096;   // row elements per block of the fallback kernel
constexpr int64_t kBackwardBytes = int64_t(64) << 20;  // float signs per backward GEMM, default

// Shared memory of the on-chip kernel for blocks of at most kMaxThreads threads (a multiple of 32):
// rows of up to kCapacity = kMaxThreads * kItems elements. Static, at most 48 KB: 40.4 KB for
// float32 keys with 512 threads, 28.4 KB for float64 keys with 256 threads.
template <typename Bits, int kMaxThreads>
struct OnChipShared {
  static constexpr int kCapacity = kMaxThreads * kItems;
  static constexpr int kCounters = kDigits * kMaxThreads;
  alignas(8) uint16_t count[kCounters];  // (digit, thread) counters, swizzled (counter())
  Bits key[kCapacity];      // the sorts' exchange buffer; after the sorts the int8 signs of u, v
  uint16_t pos[kCapacity];  // the keys' positions in the unsorted row
  int warp_total[kWarp];
  double warp_sum[kWarp];
};

// Index of counter f (f = digit * threads + thread, the scan order) in OnChipShared::count. The
// scan reads the 16 counters [16 t, 16 t + 16) of thread t as four 8-byte words; the word index
// within them is XORed with bits 2-3 of t, so that threads t, t + 4, t + 8, t + 12 of a half-warp
// read other banks (without it they would collide four-way). A bijection on each run of 16.
__device__ __forceinline__ int counter(int f) { return f ^ (((f >> 6) & 3) << 2); }

template <typename Bits>
__device__ __forceinline__ int digit(Bits key, int shift) {
  return static_cast<int>((key >> shift) & Bits(kDigits - 1));
}

// Exclusive prefix sum over the block of one int per thread (blockDim.x a multiple of 32). Every
// thread of the block must call it; warp_total: 32 ints of shared memory, free again on return.
__device__ __forceinline__ int block_exclusive_scan(int x, int* warp_total) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  int inclusive = x;
  for (int d = 1; d < kWarp; d <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += y;
  }
  if (lane == kWarp - 1) warp_total[warp] = inclusive;
  __syncthreads();
  int before = 0;
  for (int w = 0; w < warp; ++w) before += warp_total[w];
  __syncthreads();
  return before + inclusive - x;
}

// Loads row[0, length) as keys into the thread's slots [t kItems, t kItems + valid) (coalesced
// through shared memory), with their positions. Every thread must call it; s is free on return.
template <typename Key, typename scalar_t, typename S>
__device__ __forceinline__ void load_row(const scalar_t* __restrict__ row, int length,
                                         typename Key::Bits (&key)[kItems], uint16_t (&pos)[kItems],
                                         int valid, S& s) {
  for (int i = threadIdx.x; i < length; i += blockDim.x) s.key[i] = Key::encode(row[i]);
  __syncthreads();
  const int first = threadIdx.x * kItems;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (i < valid) {
      key[i] = s.key[first + i];
      pos[i] = static_cast<uint16_t>(first + i);
    }
  }
  __syncthreads();
}

// Stable LSD radix sort of the row the block holds: thread t holds slots [t kItems, t kItems +
// valid) in key (and the elements' unsorted positions in pos when kWithPos). Each pass counts the
// thread's digits, scans the (digit, thread) counters in that order and scatters the slots through
// shared memory, so equal keys keep their slot order. On return the registers hold the sorted row
// in the same arrangement. Every thread must call it; s is free on return.
template <bool kWithPos, typename Bits, int kMaxThreads>
__device__ __forceinline__ void block_radix_sort(Bits (&key)[kItems], uint16_t (&pos)[kItems],
                                                 int valid, OnChipShared<Bits, kMaxThreads>& s) {
  const int t = threadIdx.x, threads = blockDim.x;
  for (int shift = 0; shift < int(8 * sizeof(Bits)); shift += kDigitBits) {
    // The thread's digit counts, 4 bits each (at most kItems = 8), packed in one register pair.
    uint64_t packed = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (i < valid) packed += uint64_t(1) << (kDigitBits * digit(key[i], shift));
    }
#pragma unroll
    for (int d = 0; d < kDigits; ++d) {
      s.count[counter(d * threads + t)] = static_cast<uint16_t>((packed >> (kDigitBits * d)) & 15);
    }
    __syncthreads();
    // Exclusive scan of the counters in (digit, thread) order: thread t takes the 16 counters
    // [16 t, 16 t + 16), as four 8-byte words of four 16-bit counters (word q at q ^ swizzle).
    // The words are read again after the block scan rather than held in registers across it.
    uint64_t* words = reinterpret_cast<uint64_t*>(s.count) + 4 * t;
    const int swizzle = (t >> 2) & 3;
    int run = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint64_t word = words[q ^ swizzle];
#pragma unroll
      for (int j = 0; j < 4; ++j) run += static_cast<int>((word >> (16 * j)) & 0xFFFF);
    }
    run = block_exclusive_scan(run, s.warp_total);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint64_t word = words[q ^ swizzle];
      uint64_t prefix = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        prefix |= uint64_t(run) << (16 * j);
        run += static_cast<int>((word >> (16 * j)) & 0xFFFF);
      }
      words[q ^ swizzle] = prefix;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (i < valid) {
        const int slot = s.count[counter(digit(key[i], shift) * threads + t)]++;
        s.key[slot] = key[i];
        if (kWithPos) s.pos[slot] = pos[i];
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (i < valid) {
        key[i] = s.key[t * kItems + i];
        if (kWithPos) pos[i] = s.pos[t * kItems + i];
      }
    }
  }
  __syncthreads();
}

// Copies row[0, length) of int8 signs from shared memory to global memory, 4 bytes at a time when
// length is a multiple of 4 (the row then starts 4-byte aligned).
__device__ __forceinline__ void store_signs(const int8_t* from, int8_t* __restrict__ to,
                                            int length) {
  if (length % 4 == 0) {
    const auto* src = reinterpret_cast<const uint32_t*>(from);
    auto* dst = reinterpret_cast<uint32_t*>(to);
    for (int i = threadIdx.x; i < length / 4; i += blockDim.x) dst[i] = src[i];
  } else {
    for (int i = threadIdx.x; i < length; i += blockDim.x) to[i] = from[i];
  }
}

// One (sample, direction) row of L = length <= kMaxThreads * kItems elements per block of
// roundup(L / kItems, 32) threads: pu, pv (rows, L) projected values; sign_u, sign_v (rows, L)
// int8 (sign_v written only when kWithV); row_sum[row] = sum of |a - b| over the sorted row.
template <typename scalar_t, int kMaxThreads, bool kWithV>
__global__ void __launch_bounds__(kMaxThreads)
    sort_compare_row_kernel(const scalar_t* __restrict__ pu, const scalar_t* __restrict__ pv,
                            int8_t* __restrict__ sign_u, int8_t* __restrict__ sign_v,
                            double* __restrict__ row_sum, int length) {
  using Key = RadixKey<scalar_t>;
  using Bits = typename Key::Bits;
  using Shared = OnChipShared<Bits, kMaxThreads>;
  __shared__ Shared s;
  const int64_t base = int64_t(blockIdx.x) * length;
  const int rest = length - int(threadIdx.x) * kItems;
  const int valid = rest < 0 ? 0 : (rest < kItems ? rest : kItems);
  Bits ku[kItems], kv[kItems];
  uint16_t iu[kItems], iv[kItems];
  load_row<Key>(pu + base, length, ku, iu, valid, s);
  block_radix_sort<true>(ku, iu, valid, s);
  load_row<Key>(pv + base, length, kv, iv, valid, s);
  block_radix_sort<kWithV>(kv, iv, valid, s);
  int8_t* su = reinterpret_cast<int8_t*>(s.key);
  int8_t* sv = su + Shared::kCapacity;
  double acc = 0.0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (i < valid) {
      const double d = static_cast<double>(Key::decode(ku[i]) - Key::decode(kv[i]));
      acc += d < 0.0 ? -d : d;
      const int8_t g = Key::sign_of_difference(ku[i], kv[i]);
      su[iu[i]] = g;
      if (kWithV) sv[iv[i]] = static_cast<int8_t>(-g);
    }
  }
  acc = block_sum(acc, s.warp_sum);  // its barrier also publishes the signs in su, sv
  if (threadIdx.x == 0) row_sum[blockIdx.x] = acc;
  store_signs(su, sign_u + base, length);
  if (kWithV) store_signs(sv, sign_v + base, length);
}

// Fallback for rows longer than the on-chip capacity, on rows sorted by torch: block (row, chunk)
// of kThreads threads compares elements [chunk kChunk, (chunk + 1) kChunk) of the sorted rows su,
// sv (rows, L), scatters the signs through the permutations iu, iv (iv and sign_v null when v
// needs no gradient) and writes the chunk's sum of |a - b| to partial[row * nchunks + chunk].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sorted_compare_kernel(const scalar_t* __restrict__ su, const scalar_t* __restrict__ sv,
                          const int64_t* __restrict__ iu, const int64_t* __restrict__ iv,
                          int8_t* __restrict__ sign_u, int8_t* __restrict__ sign_v,
                          double* __restrict__ partial, int64_t length, int nchunks) {
  using Key = RadixKey<scalar_t>;
  __shared__ double warp_sum[kWarp];
  const int64_t row = blockIdx.x;
  const int chunk = blockIdx.y;
  const int64_t base = row * length;
  const int64_t end = min(length, int64_t(chunk + 1) * kChunk);
  double acc = 0.0;
  for (int64_t i = int64_t(chunk) * kChunk + threadIdx.x; i < end; i += kThreads) {
    const scalar_t a = su[base + i], b = sv[base + i];
    const double d = static_cast<double>(a - b);
    acc += d < 0.0 ? -d : d;
    const int8_t g = Key::sign_of_difference(Key::encode(a), Key::encode(b));
    sign_u[base + iu[base + i]] = g;
    if (sign_v != nullptr) sign_v[base + iv[base + i]] = static_cast<int8_t>(-g);
  }
  acc = block_sum(acc, warp_sum);
  if (threadIdx.x == 0) partial[row * nchunks + chunk] = acc;
}

// Largest on-chip block per compute dtype (its shared memory must stay within the 48 KB of a
// static allocation) and the row length it holds.
template <typename scalar_t>
constexpr int kLargestBlock = sizeof(scalar_t) == 4 ? 512 : 256;
template <typename scalar_t>
constexpr int kOnChipCapacity = kLargestBlock<scalar_t> * kItems;

template <typename scalar_t, int kMaxThreads>
void launch_on_chip(int64_t rows, int threads, const at::Tensor& pu, const at::Tensor& pv,
                    at::Tensor& sign_u, at::Tensor& sign_v, bool need_v_sign, at::Tensor& row_sum) {
  static_assert(sizeof(OnChipShared<typename RadixKey<scalar_t>::Bits, kMaxThreads>) <= 48 * 1024,
                "static shared memory is limited to 48 KB per block");
  const auto length = static_cast<int>(pu.size(2));
  const dim3 grid(static_cast<unsigned>(rows)), block(threads);
  if (need_v_sign) {
    launch(sort_compare_row_kernel<scalar_t, kMaxThreads, true>, grid, block,
           pu.data_ptr<scalar_t>(), pv.data_ptr<scalar_t>(), sign_u.data_ptr<int8_t>(),
           sign_v.data_ptr<int8_t>(), row_sum.data_ptr<double>(), length);
  } else {
    launch(sort_compare_row_kernel<scalar_t, kMaxThreads, false>, grid, block,
           pu.data_ptr<scalar_t>(), pv.data_ptr<scalar_t>(), sign_u.data_ptr<int8_t>(),
           static_cast<int8_t*>(nullptr), row_sum.data_ptr<double>(), length);
  }
}

// Rows of at most kOnChipCapacity elements: the projected rows pu, pv (N, C', L) sorted and
// compared on chip, in the smallest block configuration that holds the row (occupancy is bound by
// the static shared memory). Returns the per-row sums (empty when there is nothing to compare).
template <typename scalar_t>
at::Tensor compare_on_chip(const at::Tensor& pu, const at::Tensor& pv, at::Tensor& sign_u,
                           at::Tensor& sign_v, bool need_v_sign) {
  const int64_t rows = pu.size(0) * pu.size(1), length = pu.size(2);
  at::Tensor row_sum = at::empty({length > 0 ? rows : 0}, pu.options().dtype(at::kDouble));
  if (row_sum.numel() == 0) return row_sum;
  const int threads = static_cast<int>((length + kItems * kWarp - 1) / (kItems * kWarp)) * kWarp;
  if (threads <= 64) {
    launch_on_chip<scalar_t, 64>(rows, threads, pu, pv, sign_u, sign_v, need_v_sign, row_sum);
  } else if (threads <= 128) {
    launch_on_chip<scalar_t, 128>(rows, threads, pu, pv, sign_u, sign_v, need_v_sign, row_sum);
  } else {
    launch_on_chip<scalar_t, kLargestBlock<scalar_t>>(rows, threads, pu, pv, sign_u, sign_v,
                                                      need_v_sign, row_sum);
  }
  return row_sum;
}

// Longer rows: sorted by torch (u first, so its projection is freed before v is projected), then
// compared by sorted_compare_kernel. Returns the (row, chunk) partial sums.
template <typename scalar_t>
at::Tensor compare_sorted(const at::Tensor& m, const at::Tensor& u3, const at::Tensor& v3,
                          at::Tensor& sign_u, at::Tensor& sign_v, bool need_v_sign) {
  const int64_t rows = sign_u.size(0) * sign_u.size(1), length = u3.size(2);
  at::Tensor su, iu, sv, iv;
  std::tie(su, iu) = at::matmul(m, u3).sort(2);
  {
    at::Tensor pv = at::matmul(m, v3);
    if (need_v_sign) {
      std::tie(sv, iv) = pv.sort(2);
    } else {
      sv = std::get<0>(pv.sort(2));
    }
  }
  const int nchunks = static_cast<int>((length + kChunk - 1) / kChunk);  // grid.y: L up to 2^28
  at::Tensor partial = at::empty({rows, nchunks}, m.options().dtype(at::kDouble));
  if (partial.numel() > 0) {  // a grid dimension of 0 is a launch error
    launch(sorted_compare_kernel<scalar_t>, dim3(static_cast<unsigned>(rows), nchunks),
           dim3(kThreads), su.data_ptr<scalar_t>(), sv.data_ptr<scalar_t>(), iu.data_ptr<int64_t>(),
           need_v_sign ? iv.data_ptr<int64_t>() : nullptr, sign_u.data_ptr<int8_t>(),
           need_v_sign ? sign_v.data_ptr<int8_t>() : nullptr, partial.data_ptr<double>(), length,
           nchunks);
  }
  return partial;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& u,
                                                            const at::Tensor& v,
                                                            const at::Tensor& proj,
                                                            bool need_v_sign) {
  TORCH_CHECK(u.dim() == 4 && v.sizes() == u.sizes(), "u and v must be (N, C, H, W) of one shape");
  TORCH_CHECK(proj.dim() == 2 && proj.size(1) == u.size(1), "proj must be (C', C)");
  TORCH_CHECK(proj.scalar_type() == at::kFloat || proj.scalar_type() == at::kDouble,
              "proj must be float32 or float64 (the compute dtype)");
  const c10::cuda::CUDAGuard guard(u.device());
  // The inputs may require grad; the op is not traced.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t n_batch = u.size(0), channels = u.size(1), length = u.size(2) * u.size(3);
  const int64_t num_proj = proj.size(0);
  const auto dtype = proj.scalar_type();
  const auto opts = proj.options();
  const at::Tensor m = proj.contiguous();
  const at::Tensor u3 = u.reshape({n_batch, channels, length}).to(dtype);
  const at::Tensor v3 = v.reshape({n_batch, channels, length}).to(dtype);
  at::Tensor sign_u = new_output({n_batch, num_proj, length}, opts.dtype(at::kChar));
  at::Tensor sign_v = need_v_sign ? new_output({n_batch, num_proj, length}, opts.dtype(at::kChar))
                                  : at::empty({0}, opts.dtype(at::kChar));
  at::Tensor loss = new_output({}, opts);
  AT_DISPATCH_FLOATING_TYPES(dtype, "sliced_wasserstein_forward_cuda", [&] {
    const at::Tensor partial =
        length <= kOnChipCapacity<scalar_t>
            ? compare_on_chip<scalar_t>(at::matmul(m, u3).contiguous(),
                                        at::matmul(m, v3).contiguous(), sign_u, sign_v, need_v_sign)
            : compare_sorted<scalar_t>(m, u3, v3, sign_u, sign_v, need_v_sign);
    finish_loss<scalar_t>(partial, static_cast<double>(n_batch * num_proj * length), loss);
  });
  return {loss, sign_u, sign_v};
}

// du (N, C, L) = proj_scaled^T (C, C') @ sign[n] (C', L) for every n, in proj_scaled's dtype; sign
// is int8 (this loss's signs) or int32 (the local loss's per-pixel sums of signs), as on CPU:
// groups of samples whose signs, converted to that dtype, take at most the budget (64 MiB unless
// DZSR_SW_BLOCK_BYTES says otherwise; column chunks of one sample when one sample is larger) are
// multiplied by one batched GEMM each, straight into their slice of du.
at::Tensor backward_cuda(const at::Tensor& sign, const at::Tensor& proj_scaled) {
  TORCH_CHECK(
      sign.dim() == 3 && (sign.scalar_type() == at::kChar || sign.scalar_type() == at::kInt),
      "sign must be int8 or int32 (N, C', L)");
  TORCH_CHECK(proj_scaled.dim() == 2 && proj_scaled.size(0) == sign.size(1),
              "proj_scaled must be (C', C)");
  const c10::cuda::CUDAGuard guard(sign.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t n_batch = sign.size(0), num_proj = sign.size(1), length = sign.size(2);
  const int64_t channels = proj_scaled.size(1);
  at::Tensor du = new_output({n_batch, channels, length}, proj_scaled.options());
  const at::Tensor mt = proj_scaled.t();
  const int64_t budget = budget_bytes(kBackwardBytes);
  const int64_t column_bytes = std::max<int64_t>(1, num_proj * proj_scaled.element_size());
  const int64_t columns = std::max<int64_t>(1, std::min<int64_t>(length, budget / column_bytes));
  const int64_t samples =
      columns < length ? 1
                       : std::max<int64_t>(1, budget / std::max<int64_t>(1, column_bytes * length));
  for (int64_t n0 = 0; n0 < n_batch; n0 += samples) {
    const int64_t nb = std::min(samples, n_batch - n0);
    for (int64_t l0 = 0; l0 < length; l0 += columns) {
      const int64_t lc = std::min(columns, length - l0);
      const at::Tensor g = sign.narrow(0, n0, nb).narrow(2, l0, lc).to(proj_scaled.scalar_type());
      at::Tensor out = du.narrow(0, n0, nb).narrow(2, l0, lc);
      at::bmm_out(out, mt.expand({nb, channels, num_proj}), g);
    }
  }
  return du;
}

}  // namespace
}  // namespace sw
}  // namespace dzsr

#ifndef DZSR_CUDA_EMULATION
TORCH_LIBRARY_IMPL(dzsr_C, CUDA, m) {
  m.impl("sliced_wasserstein_forward", &dzsr::sw::forward_cuda);
  m.impl("sliced_wasserstein_backward", &dzsr::sw::backward_cuda);
}
#endif
