// CUDA kernels of the packed deformable convolution
// (torch.ops.dzsr_C.deform_conv2d_{forward,backward}).
//
// Layouts: x (N, C, H, W) contiguous or channels-last, geom (N, G, H, W) contiguous with G = 6
// (affine: A0..A3, by, bx) or 2k^2 (general offsets), weight (C_out, C/groups, k, k) contiguous,
// grad_out any layout. Channels-last depthwise inputs (C/groups == 1, C_out == C: AdaSTN's
// transform) run the channels-last kernels on x as it is and return out and dx channels-last;
// everything else runs the planar kernels on contiguous copies and returns contiguous tensors
// (op.py gives every backend's out and dx x's memory format). NaN/Inf follow reference.py's rule
// through the shared math; empty N, H or W launch nothing. The per-element math
// (tap positions, bilinear corners and their derivatives, geometry gradient) comes from
// deform_conv_math.h, shared with the CPU kernels. Half/bfloat16 inputs accumulate in float and
// their gradients are accumulated in float buffers, cast at the end; the geometry is read in the
// accumulation type (the host converts it, it is 6 or 2k^2 channels).
//
// Channels-last depthwise kernels (see the section below): 16-byte channel-vector loads of each
// bilinear corner, the tap geometry computed once per thread and applied to its 16 (forward) or
// all (backward, in vector steps) channels; backward reduces dgeom and dweight by warp shuffles
// (no per-channel atomics) and scatters dx with float4 atomics on sm_90.
//
// Planar kernels, one thread per (n, pixel) and a block of channels; the tap geometry is computed
// once per (thread, tap) and reused for every channel of the block. Nothing of size C*k^2*H*W is
// stored.
//   depthwise_forward_kernel  out, C/groups == 1: a thread owns CPT output channels of any groups.
//   grouped_forward_kernel    out otherwise: a thread owns CPT output channels of one group and
//                    feeds each sample to all of them (register blocking; weights staged in shared
//                    memory).
//   input_grad_kernel  dx by atomicAdd scatter of the column gradient, dgeom per pixel: the BY
//                    channel threads of a pixel reduce their position gradients through shared
//                    memory and one thread owns the pixel's dgeom (no atomics). Depthwise also
//                    reduces dweight here (warp shuffle, one atomicAdd per warp and weight);
//                    grouped stages the weights in shared memory.
//   weight_grad_kernel dweight of grouped/dense convs: a split-K tiled GEMM go (co x pixel) times
//                    sampled columns (pixel x ci) through shared memory, atomicAdd of the tile.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#ifdef DZSR_CUDA_EMULATION
// Test-only build (tests/cuda_emulation/): the same kernels and host code run on CPU threads with
// CPU tensors, so they can be checked against the reference on a machine without a GPU.
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "common.h"
#include "deform_conv/deform_conv_math.h"

namespace dzsr {
namespace deform {
namespace {

#ifdef DZSR_CUDA_EMULATION
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;
#else
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
#endif

// Launch `kernel` on grid x block threads on `stream` and check the launch.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
#ifdef DZSR_CUDA_EMULATION
  emulation::launch(kernel, grid, block, args...);
#else
  kernel<<<grid, block, 0, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

constexpr int kForwardThreads = 128;  // pixels per forward block
constexpr int kGradPixels = 32;  // pixels per input-gradient block (one warp per channel block)
constexpr int kGradBlocksY = 8;  // channel-block threads per pixel in the input-gradient kernel
// Minimum resident blocks per SM the input-gradient kernel asks ptxas for: 1 for float64, which
// otherwise aims at 64-80 registers for occupancy and spills 40-128 B on sm_90 (float64 is not a
// speed path); 0 (no request: the compiler's own choice, 64-126 registers, no spill) for the rest.
template <typename acc_t>
constexpr int kGradMinBlocks = sizeof(acc_t) == 8 ? 1 : 0;
constexpr int kTile = 32;         // weight-gradient GEMM tile (co x ci x pixels)
constexpr int kWeightChunk = 32;  // input channels whose weights the grouped forward stages at once
constexpr int kGradCoChunk = 32;  // output channels whose weights the grouped input gradient stages

struct Shape {
  int N, C, C_out, H, W, groups, k;
  bool affine;
  __host__ __device__ int64_t HW() const { return int64_t(H) * W; }
  __host__ __device__ int c_in_g() const { return C / groups; }
  __host__ __device__ int c_out_g() const { return C_out / groups; }
  __host__ __device__ int KK() const { return k * k; }
  __host__ __device__ int G() const { return affine ? 6 : 2 * k * k; }
};

// Taps of tap t at pixel p of sample n (no corner inside, bad = 0, for pixels past the end of the
// plane).
template <typename acc_t>
__device__ __forceinline__ Taps<acc_t> pixel_taps(const acc_t* geom_n, const Shape& s, int64_t p,
                                                  int t) {
  Taps<acc_t> taps;
  if (p < s.HW()) {
    acc_t py, px;
    tap_position(geom_n, s.HW(), p, s.affine, t, s.k, int(p / s.W), int(p % s.W), py, px);
    bilinear_taps(py, px, s.H, s.W, taps);
  } else {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      taps.idx[c] = -1;
      taps.w[c] = taps.wy[c] = taps.wx[c] = acc_t(0);
    }
    taps.bad = acc_t(0);
  }
  return taps;
}

// Writes acc (+ bias) to out[n, co0 + j, p] for the block's n_co output channels.
template <typename scalar_t, typename acc_t, int CPT>
__device__ __forceinline__ void store_outputs(const acc_t (&acc)[CPT],
                                              const scalar_t* __restrict__ bias,
                                              scalar_t* __restrict__ out, const Shape& s, int n,
                                              int co0, int n_co, int64_t p) {
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    if (j < n_co) {
      const acc_t b = bias == nullptr ? acc_t(0) : static_cast<acc_t>(bias[co0 + j]);
      out[(int64_t(n) * s.C_out + co0 + j) * s.HW() + p] = static_cast<scalar_t>(acc[j] + b);
    }
  }
}

// Depthwise (C/groups == 1): grid (ceil(HW / kForwardThreads), ceil(C_out / CPT), N); block b owns
// output channels [b*CPT, b*CPT + CPT), each reading its own input channel co / (C_out/groups).
template <typename scalar_t, typename acc_t, int CPT>
__global__ void __launch_bounds__(kForwardThreads)
    depthwise_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ geom,
                             const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                             scalar_t* __restrict__ out, Shape s) {
  const int64_t HW = s.HW();
  const int64_t p = int64_t(blockIdx.x) * kForwardThreads + threadIdx.x;
  if (p >= HW) return;
  const int n = blockIdx.z, c_out_g = s.c_out_g(), KK = s.KK();
  const int co0 = blockIdx.y * CPT, n_co = min(CPT, s.C_out - co0);
  const scalar_t* x_n = x + int64_t(n) * s.C * HW;
  const acc_t* geom_n = geom + int64_t(n) * s.G() * HW;
  acc_t acc[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) acc[j] = acc_t(0);
  for (int t = 0; t < KK; ++t) {
    const Taps<acc_t> taps = pixel_taps(geom_n, s, p, t);
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      if (j < n_co) {
        const int co = co0 + j;
        acc[j] += static_cast<acc_t>(weight[int64_t(co) * KK + t]) *
                  sample<acc_t>(x_n + int64_t(co / c_out_g) * HW, taps);
      }
    }
  }
  store_outputs(acc, bias, out, s, n, co0, n_co, p);
}

// Grouped/dense: grid (ceil(HW / kForwardThreads), groups * blocks_per_group, N); block
// b = g * blocks_per_group + j owns output channels [j*CPT, j*CPT + CPT) of group g, and each
// sample of an input channel feeds all CPT of them. Per tap, the weights w[co, ci, t] of the
// block's channels are staged in shared memory kWeightChunk input channels at a time ([ci][co], so
// a thread reads them as vectors, all threads the same address).
template <typename scalar_t, typename acc_t, int CPT>
__global__ void __launch_bounds__(kForwardThreads)
    grouped_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ geom,
                           const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                           scalar_t* __restrict__ out, Shape s) {
  __shared__ __align__(16) acc_t w_s[kWeightChunk][CPT];
  const int64_t HW = s.HW();
  // p >= HW: the thread only stages weights.
  const int64_t p = int64_t(blockIdx.x) * kForwardThreads + threadIdx.x;
  const int n = blockIdx.z, c_in_g = s.c_in_g(), c_out_g = s.c_out_g(), KK = s.KK();
  const int per_group = (c_out_g + CPT - 1) / CPT;
  const int g = blockIdx.y / per_group;
  const int co0 = g * c_out_g + (blockIdx.y % per_group) * CPT;
  const int n_co = min(CPT, (g + 1) * c_out_g - co0);
  const scalar_t* x_g = x + (int64_t(n) * s.C + int64_t(g) * c_in_g) * HW;
  const acc_t* geom_n = geom + int64_t(n) * s.G() * HW;
  acc_t acc[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) acc[j] = acc_t(0);
  for (int t = 0; t < KK; ++t) {
    const Taps<acc_t> taps = pixel_taps(geom_n, s, p, t);  // all-zero weights when p >= HW
    for (int ci0 = 0; ci0 < c_in_g; ci0 += kWeightChunk) {
      const int n_ci = min(kWeightChunk, c_in_g - ci0);
      __syncthreads();  // the previous chunk has been read by every thread
      for (int e = threadIdx.x; e < kWeightChunk * CPT; e += kForwardThreads) {
        const int ci = e / CPT, j = e % CPT;
        w_s[ci][j] =
            (ci < n_ci && j < n_co)
                ? static_cast<acc_t>(weight[(int64_t(co0 + j) * c_in_g + ci0 + ci) * KK + t])
                : acc_t(0);
      }
      __syncthreads();
      for (int ci = 0; ci < n_ci; ++ci) {
        const acc_t v = sample<acc_t>(x_g + int64_t(ci0 + ci) * HW, taps);
#pragma unroll
        for (int j = 0; j < CPT; ++j) acc[j] += w_s[ci][j] * v;
      }
    }
  }
  if (p < HW) store_outputs(acc, bias, out, s, n, co0, n_co, p);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  return v;
}

// Column gradient of input channel c at one tap: scatters dcol * corner weight into the inside
// corners of dx (atomics; an exact zero, e.g. a zero weight times a finite dcol, is skipped, while
// a NaN is added) and adds dcol * d(sample)/d(position) to (gpy, gpx); returns the sample value.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t scatter_column_grad(const scalar_t* __restrict__ x_plane,
                                                     acc_t* __restrict__ dx_plane,
                                                     const Taps<acc_t>& taps, acc_t dcol,
                                                     acc_t& gpy, acc_t& gpx) {
  acc_t v, dvy, dvx;
  sample_with_grad<acc_t>(x_plane, taps, v, dvy, dvx);
  gpy += dcol * dvy;
  gpx += dcol * dvx;
#pragma unroll
  for (int corner = 0; corner < 4; ++corner) {
    const acc_t g = dcol * taps.w[corner];
    if (taps.idx[corner] >= 0 && g != acc_t(0)) atomicAdd(dx_plane + taps.idx[corner], g);
  }
  return v;
}

// grid (ceil(HW / kGradPixels), N), block (kGradPixels, kGradBlocksY): thread (tx, ty) handles
// pixel tx of the block and, per tap, a share of the input channels; the column gradient of input
// channel ci is dcol[ci] = sum_co w[co, ci, t] * go[co, p] over the output channels of its group.
// The BY position-gradient partial sums of a pixel meet in shared memory and thread ty == 0 adds
// the pixel's geometry gradient, so dgeom needs no atomics.
//   DEPTHWISE (C/groups == 1, CPT == 1): thread ty takes channels ty, ty + BY, ...; it also reduces
//     dweight[co, 0, t] += sum over the warp's pixels of go[co, p] * sample (one atomicAdd per
//     warp).
//   otherwise: for each group, passes of BY * CPT input channels (thread ty takes CPT of them,
//     maybe none in the last pass); the weights of the pass are staged in shared memory
//     kGradCoChunk output channels at a time ([co][ci], each thread reading its CPT entries as
//     vectors).
template <typename scalar_t, typename acc_t, int CPT, bool DEPTHWISE>
__global__ void __launch_bounds__(kGradPixels* kGradBlocksY, kGradMinBlocks<acc_t>)
    input_grad_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                      const acc_t* __restrict__ geom, const scalar_t* __restrict__ weight,
                      acc_t* __restrict__ dx, acc_t* __restrict__ dgeom,
                      acc_t* __restrict__ dweight, Shape s) {
  constexpr int kPassChannels = kGradBlocksY * CPT;
  __shared__ acc_t part[2][kGradBlocksY][kGradPixels];
  __shared__ __align__(16) acc_t w_s[DEPTHWISE ? 1 : kGradCoChunk][kPassChannels];
  const int64_t HW = s.HW();
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kGradPixels + tx;
  const int64_t p = int64_t(blockIdx.x) * kGradPixels + tx;
  const bool valid = p < HW;
  const int n = blockIdx.y;
  const int c_in_g = s.c_in_g(), c_out_g = s.c_out_g(), KK = s.KK();
  const scalar_t* x_n = x + int64_t(n) * s.C * HW;
  const scalar_t* go_n = grad_out + int64_t(n) * s.C_out * HW;
  const acc_t* geom_n = geom + int64_t(n) * s.G() * HW;
  acc_t* dx_n = dx + int64_t(n) * s.C * HW;
  acc_t* dgeom_n = dgeom + int64_t(n) * s.G() * HW;
  auto grad_out_at = [&](int co) {
    return valid ? static_cast<acc_t>(go_n[int64_t(co) * HW + p]) : acc_t(0);
  };

  for (int t = 0; t < KK; ++t) {
    const Taps<acc_t> taps = pixel_taps(geom_n, s, p, t);
    acc_t gpy = taps.bad, gpx = taps.bad;  // NaN for a non-finite position, whatever the channels
    if (DEPTHWISE) {
      for (int c = ty; c < s.C; c += kGradBlocksY) {  // uniform across the warp
        acc_t dcol = acc_t(0);
        for (int co = c * c_out_g; co < (c + 1) * c_out_g; ++co)
          dcol += static_cast<acc_t>(weight[int64_t(co) * KK + t]) * grad_out_at(co);
        const acc_t v = scatter_column_grad(x_n + int64_t(c) * HW, dx_n + int64_t(c) * HW, taps,
                                            dcol, gpy, gpx);
        for (int co = c * c_out_g; co < (c + 1) * c_out_g; ++co) {
          const acc_t sum = warp_sum(grad_out_at(co) * v);
          if (tx == 0) atomicAdd(dweight + int64_t(co) * KK + t, sum);
        }
      }
    } else {
      for (int g = 0; g < s.groups; ++g) {
        for (int pass = 0; pass < c_in_g; pass += kPassChannels) {
          const int ci0 = pass + ty * CPT;  // this thread's first input channel in the group
          acc_t dcol[CPT];
#pragma unroll
          for (int j = 0; j < CPT; ++j) dcol[j] = acc_t(0);
          for (int co_base = 0; co_base < c_out_g; co_base += kGradCoChunk) {
            const int n_co = min(kGradCoChunk, c_out_g - co_base);
            __syncthreads();  // the previous chunk has been read by every thread
            for (int e = tid; e < kGradCoChunk * kPassChannels; e += kGradPixels * kGradBlocksY) {
              const int co = e / kPassChannels, ci = pass + e % kPassChannels;
              w_s[co][e % kPassChannels] =
                  (co < n_co && ci < c_in_g)
                      ? static_cast<acc_t>(
                            weight[((int64_t(g) * c_out_g + co_base + co) * c_in_g + ci) * KK + t])
                      : acc_t(0);
            }
            __syncthreads();
            for (int co = 0; co < n_co; ++co) {
              const acc_t go = grad_out_at(g * c_out_g + co_base + co);
#pragma unroll
              for (int j = 0; j < CPT; ++j) dcol[j] += w_s[co][ty * CPT + j] * go;
            }
          }
#pragma unroll
          for (int j = 0; j < CPT; ++j) {
            if (ci0 + j < c_in_g) {
              const int64_t c = int64_t(g) * c_in_g + ci0 + j;
              scatter_column_grad(x_n + c * HW, dx_n + c * HW, taps, dcol[j], gpy, gpx);
            }
          }
        }
      }
    }
    part[0][ty][tx] = gpy;
    part[1][ty][tx] = gpx;
    __syncthreads();
    if (ty == 0 && valid) {
      acc_t sy = acc_t(0), sx = acc_t(0);
#pragma unroll
      for (int r = 0; r < kGradBlocksY; ++r) {
        sy += part[0][r][tx];
        sx += part[1][r][tx];
      }
      accumulate_geom_grad(dgeom_n, HW, p, s.affine, t, s.k, sy, sx);
    }
    __syncthreads();
  }
}

// dweight[co, ci, t] = sum over n and pixels of go[n, co, p] * sample(x[n, ci], tap t at p).
// grid (pixel chunks, groups * co_tiles * ci_tiles * KK, N), 256 threads. Each block multiplies a
// kTile x kTile (co x ci) tile over its chunk of pixels in kTile-pixel steps: go and the sampled
// columns are staged in shared memory, each thread accumulates 4 (co, ci) entries, and the tile is
// added to dweight with atomicAdd at the end.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    weight_grad_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                       const acc_t* __restrict__ geom, acc_t* __restrict__ dweight, Shape s,
                       int tiles_per_chunk) {
  __shared__ acc_t go_s[kTile][kTile + 1];
  __shared__ acc_t col_s[kTile][kTile + 1];
  __shared__ Taps<acc_t> taps_s[kTile];
  const int64_t HW = s.HW();
  const int tid = threadIdx.x;
  const int n = blockIdx.z;
  const int c_in_g = s.c_in_g(), c_out_g = s.c_out_g(), KK = s.KK();
  const int co_tiles = (c_out_g + kTile - 1) / kTile, ci_tiles = (c_in_g + kTile - 1) / kTile;
  int rest = blockIdx.y;
  const int t = rest % KK;
  rest /= KK;
  const int ci0 = (rest % ci_tiles) * kTile;
  rest /= ci_tiles;
  const int co0 = (rest % co_tiles) * kTile;
  const int g = rest / co_tiles;
  const scalar_t* x_g = x + (int64_t(n) * s.C + int64_t(g) * c_in_g) * HW;
  const scalar_t* go_g = grad_out + (int64_t(n) * s.C_out + int64_t(g) * c_out_g) * HW;
  const acc_t* geom_n = geom + int64_t(n) * s.G() * HW;

  const int my_co = tid / 8;  // 0..31
  const int my_ci = tid % 8;  // ci = my_ci + 8 * i
  acc_t acc[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  const int64_t n_tiles = (HW + kTile - 1) / kTile;
  const int64_t tile_begin = int64_t(blockIdx.x) * tiles_per_chunk;
  const int64_t tile_end = min(n_tiles, tile_begin + tiles_per_chunk);
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t p0 = tile * kTile;
    if (tid < kTile) taps_s[tid] = pixel_taps(geom_n, s, p0 + tid, t);
    __syncthreads();
#pragma unroll
    for (int e = tid; e < kTile * kTile; e += 256) {
      const int r = e / kTile, q = e % kTile;
      const int64_t p = p0 + q;
      go_s[r][q] = (co0 + r < c_out_g && p < HW)
                       ? static_cast<acc_t>(go_g[int64_t(co0 + r) * HW + p])
                       : acc_t(0);
      col_s[r][q] =
          (ci0 + r < c_in_g) ? sample<acc_t>(x_g + int64_t(ci0 + r) * HW, taps_s[q]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int q = 0; q < kTile; ++q) {
      const acc_t a = go_s[my_co][q];
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += a * col_s[my_ci + 8 * i][q];
    }
    __syncthreads();
  }
  if (co0 + my_co >= c_out_g) return;
  const int64_t co = int64_t(g) * c_out_g + co0 + my_co;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int ci = ci0 + my_ci + 8 * i;
    if (ci < c_in_g) atomicAdd(dweight + (co * c_in_g + ci) * KK + t, acc[i]);
  }
}

// ---- Channels-last depthwise path (C/groups == 1 and C_out == C: the AdaSTN transform) ---------
//
// x, out, grad_out and dx are (N, H, W, C) in memory (channels-last tensors used in place); geom is
// (N, G, H, W) as above; the weights are transposed to wt (k^2, C) in acc_t so that a thread reads
// the weights of its channels for one tap as one vector. A pixel's `tpp` threads split its channels
// in vectors of V: thread j owns the vectors j, j + tpp, ..., so each bilinear corner of a tap is
// read as V-element (16-byte) loads, the tpp threads reading consecutive pieces of the corner's
// channel row. V > 1 needs C % V == 0 and 16-byte-aligned x and grad_out (the host checks, else
// V = 1). Each thread computes a tap's geometry once and applies it to all its channels.

constexpr int kClForwardChannels = 16;  // channels per forward thread (NV = 16 / V vectors)
constexpr int kClGradThreads = 256;     // threads per backward block
constexpr int kClGradBlocksPerSm = 4;   // backward grid: a persistent grid-stride loop
constexpr int kMaxClWeights = 2048;     // k^2 * C of the backward block's dweight accumulator

// Elements per 16-byte vector of T: 4 float, 2 double, 8 half/bfloat16.
template <typename T>
constexpr int kVec16 = int(16 / sizeof(T));

// V elements of T read or written as one aligned access (one 16-byte LDG/STG when
// sizeof(T) * V == 16; in the emulation, V element accesses).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, V>*>(p);
}

// dst[e] += v[e] for e < V: float4 atomics where the architecture has them (sm_90), element
// atomics otherwise and in the emulation. dst is 16-byte aligned when V % 4 == 0.
template <typename acc_t, int V>
__device__ __forceinline__ void atomic_add_vec(acc_t* dst, const acc_t (&v)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<acc_t, float> && V % 4 == 0) {
#pragma unroll
    for (int e = 0; e < V; e += 4)
      atomicAdd(reinterpret_cast<float4*>(dst + e),
                make_float4(v[e], v[e + 1], v[e + 2], v[e + 3]));
  } else
#endif
  {
#pragma unroll
    for (int e = 0; e < V; ++e) atomicAdd(dst + e, v[e]);
  }
}

// Sum of v over the warp lanes whose indices differ only in the bits lo, 2 lo, ..., < hi (powers
// of two): (1, tpp) sums a pixel's threads, (tpp, 32) one channel slot over the warp's pixels.
template <typename acc_t>
__device__ __forceinline__ acc_t lane_sum(acc_t v, int lo, int hi) {
  for (int d = lo; d < hi; d <<= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}

// grid ceil(N * HW * tpp / kForwardThreads), tpp = ceil(C / (V * NV)): thread i owns pixel
// q = i / tpp (flat over n and the plane) and up to NV vectors of its channels; out[q, c] =
// bias[c] + sum_t wt[t, c] * sample of channel c at tap t, accumulated in acc_t as the planar
// kernel does.
template <typename scalar_t, typename acc_t, int V, int NV>
__global__ void __launch_bounds__(kForwardThreads)
    depthwise_cl_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ geom,
                                const acc_t* __restrict__ wt, const acc_t* __restrict__ bias,
                                scalar_t* __restrict__ out, Shape s, int tpp) {
  const int64_t HW = s.HW(), C = s.C;
  const int64_t i = int64_t(blockIdx.x) * kForwardThreads + threadIdx.x;
  const int64_t q = i / tpp;
  if (q >= s.N * HW) return;
  const int j = int(i % tpp);
  const int64_t n = q / HW, p = q % HW;
  const scalar_t* x_n = x + n * HW * C;
  const acc_t* geom_n = geom + n * s.G() * HW;
  acc_t acc[NV][V];
#pragma unroll
  for (int u = 0; u < NV; ++u)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[u][e] = acc_t(0);
  for (int t = 0; t < s.KK(); ++t) {
    const Taps<acc_t> taps = pixel_taps(geom_n, s, p, t);
#pragma unroll
    for (int u = 0; u < NV; ++u) {
      const int64_t c0 = int64_t(j + u * tpp) * V;
      if (c0 >= C) break;
      acc_t val[V];
#pragma unroll
      for (int e = 0; e < V; ++e) val[e] = taps.bad;
#pragma unroll
      for (int corner = 0; corner < 4; ++corner) {
        if (taps.idx[corner] < 0) continue;
        const Vec<scalar_t, V> xv = load_vec<scalar_t, V>(x_n + taps.idx[corner] * C + c0);
#pragma unroll
        for (int e = 0; e < V; ++e) val[e] += taps.w[corner] * static_cast<acc_t>(xv.v[e]);
      }
      const Vec<acc_t, V> w = load_vec<acc_t, V>(wt + t * C + c0);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[u][e] += w.v[e] * val[e];
    }
  }
#pragma unroll
  for (int u = 0; u < NV; ++u) {
    const int64_t c0 = int64_t(j + u * tpp) * V;
    if (c0 >= C) break;
    Vec<scalar_t, V> o;
#pragma unroll
    for (int e = 0; e < V; ++e)
      o.v[e] = static_cast<scalar_t>(acc[u][e] + (bias == nullptr ? acc_t(0) : bias[c0 + e]));
    *reinterpret_cast<Vec<scalar_t, V>*>(out + q * C + c0) = o;
  }
}

// Persistent grid of kClGradThreads-thread blocks over N * HW * tpp threads (tpp a power of two
// <= 32, so a warp holds 32 / tpp whole pixels). Per pixel and tap, each thread samples its
// channel vectors with the position derivatives and
//   dx:      scatters dcol * corner weight (dcol = wt[t, c] * go[q, c]) with vector atomics;
//   dgeom:   sums dcol * d(sample)/d(position) over its channels, then over the pixel's tpp threads
//            by warp shuffles; thread j == 0 owns the pixel's dgeom (no atomics);
//   dweight: go * sample, summed over the warp's pixels by shuffles into a block accumulator in
//            shared memory (k^2 * C <= kMaxClWeights), added to dweight once per block at the end.
// Every thread runs the same number of loop iterations (a thread past the end works on an empty
// pixel), so the full-warp shuffles always have all 32 lanes.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kClGradThreads)
    depthwise_cl_backward_kernel(const scalar_t* __restrict__ grad_out,
                                 const scalar_t* __restrict__ x, const acc_t* __restrict__ geom,
                                 const acc_t* __restrict__ wt, acc_t* __restrict__ dx,
                                 acc_t* __restrict__ dgeom, acc_t* __restrict__ dweight, Shape s,
                                 int tpp) {
  __shared__ acc_t dw_s[kMaxClWeights];  // [t][c]
  const int64_t HW = s.HW(), C = s.C;
  const int KK = s.KK(), nvec = int(C / V), j = int(threadIdx.x) % tpp;
  const bool first_pixel_of_warp = int(threadIdx.x) % 32 < tpp;
  for (int e = threadIdx.x; e < KK * C; e += kClGradThreads) dw_s[e] = acc_t(0);
  __syncthreads();
  const int64_t pixels = s.N * HW, stride = int64_t(gridDim.x) * kClGradThreads;
  for (int64_t i = int64_t(blockIdx.x) * kClGradThreads + threadIdx.x;
       i - threadIdx.x < pixels * tpp; i += stride) {
    const int64_t q = i / tpp;
    const bool valid = q < pixels;
    const int64_t n = valid ? q / HW : 0, p = valid ? q % HW : HW;  // p = HW: no corner inside
    const scalar_t* x_n = x + n * HW * C;
    acc_t* dx_n = dx + n * HW * C;
    const acc_t* geom_n = geom + n * s.G() * HW;
    for (int t = 0; t < KK; ++t) {
      const Taps<acc_t> taps = pixel_taps(geom_n, s, p, t);
      acc_t gpy = taps.bad, gpx = taps.bad;
      for (int cv0 = 0; cv0 < nvec; cv0 += tpp) {  // the same trip count on every lane
        const int64_t c0 = int64_t(cv0 + j) * V;
        const bool active = valid && c0 < C;
        acc_t go[V], val[V], dvy[V], dvx[V];
        const Vec<scalar_t, V> gv =
            active ? load_vec<scalar_t, V>(grad_out + q * C + c0) : Vec<scalar_t, V>{};
        const Vec<acc_t, V> w = active ? load_vec<acc_t, V>(wt + t * C + c0) : Vec<acc_t, V>{};
#pragma unroll
        for (int e = 0; e < V; ++e) {
          go[e] = active ? static_cast<acc_t>(gv.v[e]) : acc_t(0);
          val[e] = taps.bad;
          dvy[e] = dvx[e] = acc_t(0);
        }
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          if (!active || taps.idx[corner] < 0) continue;
          const Vec<scalar_t, V> xv = load_vec<scalar_t, V>(x_n + taps.idx[corner] * C + c0);
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const acc_t xe = static_cast<acc_t>(xv.v[e]);
            val[e] += taps.w[corner] * xe;
            dvy[e] += taps.wy[corner] * xe;
            dvx[e] += taps.wx[corner] * xe;
          }
        }
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          if (!active || taps.idx[corner] < 0) continue;
          acc_t g[V];
          bool any = false;  // an all-zero vector is skipped; a NaN is added
#pragma unroll
          for (int e = 0; e < V; ++e) {
            g[e] = w.v[e] * go[e] * taps.w[corner];
            any = any || g[e] != acc_t(0);
          }
          if (any) atomic_add_vec(dx_n + taps.idx[corner] * C + c0, g);
        }
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const acc_t dcol = w.v[e] * go[e];
          gpy += dcol * dvy[e];
          gpx += dcol * dvx[e];
          const acc_t dw = lane_sum(active ? go[e] * val[e] : acc_t(0), tpp, 32);
          if (first_pixel_of_warp && c0 < C) atomicAdd(dw_s + t * C + c0 + e, dw);
        }
      }
      gpy = lane_sum(gpy, 1, tpp);
      gpx = lane_sum(gpx, 1, tpp);
      if (valid && j == 0)
        accumulate_geom_grad(dgeom + n * s.G() * HW, HW, p, s.affine, t, s.k, gpy, gpx);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < KK * C; e += kClGradThreads) {
    const int t = e / int(C), c = e % int(C);
    if (dw_s[e] != acc_t(0)) atomicAdd(dweight + int64_t(c) * KK + t, dw_s[e]);
  }
}

// The channels-last depthwise kernels take x as it is: depthwise with C_out == C and x
// channels-last (and not also NCHW-contiguous, as when C == 1 or H * W == 1).
bool channels_last_depthwise(const at::Tensor& x, const Shape& s) {
  return s.c_in_g() == 1 && s.C_out == s.C && !x.is_contiguous() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// A new (N, C, H, W) tensor with channels-last strides.
at::Tensor new_channels_last(const Shape& s, int64_t C, const at::TensorOptions& options,
                             bool zero) {
  const std::vector<int64_t> sizes{s.N, s.H, s.W, C};
  return (zero ? at::zeros(sizes, options) : dzsr::new_output(sizes, options))
      .permute({0, 3, 1, 2});
}

// wt (k^2, C) in acc_t: the depthwise weight (C, 1, k, k) tap-major.
at::Tensor tap_major_weights(const at::Tensor& weight, const Shape& s, at::ScalarType acc) {
  return weight.reshape({s.C, s.KK()}).t().contiguous().to(acc);
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

Shape check_inputs(const at::Tensor& x, const at::Tensor& geom, bool affine,
                   const at::Tensor& weight, int64_t groups, const char* op) {
  TORCH_CHECK(x.device().type() == kKernelDevice && geom.device().type() == kKernelDevice &&
                  weight.device().type() == kKernelDevice,
              op, ": x, geom and weight must be CUDA tensors");
  TORCH_CHECK(x.dim() == 4 && geom.dim() == 4 && weight.dim() == 4, op,
              ": x (N,C,H,W), geom (N,G,H,W) and weight (C_out,C/groups,k,k) must be 4-d");
  TORCH_CHECK((x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) &&
                  geom.is_contiguous() && weight.is_contiguous(),
              op, ": x must be contiguous or channels-last, geom and weight contiguous");
  TORCH_CHECK(geom.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type(), op,
              ": x, geom and weight must share one dtype");
  TORCH_CHECK(x.get_device() == geom.get_device() && x.get_device() == weight.get_device(), op,
              ": x, geom and weight must be on one device");
  Shape s{int(x.size(0)), int(x.size(1)), int(weight.size(0)), int(x.size(2)),
          int(x.size(3)), int(groups),    int(weight.size(2)), affine};
  TORCH_CHECK(groups >= 1 && s.C % groups == 0 && s.C_out % groups == 0, op, ": groups=", groups,
              " must divide C=", s.C, " and C_out=", s.C_out);
  TORCH_CHECK(weight.size(1) == s.C / groups && weight.size(3) == s.k && s.k % 2 == 1, op,
              ": weight must be (C_out, C/groups, k, k) with odd k, got ", weight.sizes());
  TORCH_CHECK(
      geom.size(0) == s.N && geom.size(1) == s.G() && geom.size(2) == s.H && geom.size(3) == s.W,
      op, ": geom must be (N, ", s.G(), ", H, W), got ", geom.sizes());
  TORCH_CHECK(s.HW() < (int64_t(1) << 31), op, ": H*W must be below 2^31");
  TORCH_CHECK(s.N <= 65535, op,
              ": the CUDA kernels take at most 65535 samples per call, got N=", s.N);
  return s;
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Channels-last depthwise forward (channels_last_depthwise(x, s)): out (N, C, H, W) channels-last.
at::Tensor forward_channels_last(const at::Tensor& x, const at::Tensor& geom_acc,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 const Shape& s, cudaStream_t stream) {
  const at::ScalarType acc = geom_acc.scalar_type();
  at::Tensor out = new_channels_last(s, s.C, x.options(), false);
  const at::Tensor wt = tap_major_weights(weight, s, acc);
  const at::Tensor bias_acc = bias.has_value() ? bias->to(acc) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "deform_conv2d_forward_cuda_cl", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        auto run = [&](auto kernel, int V, int NV) {
          const int tpp = (s.C + V * NV - 1) / (V * NV);
          const int64_t threads = int64_t(s.N) * s.HW() * tpp;
          launch(kernel, dim3(unsigned((threads + kForwardThreads - 1) / kForwardThreads)),
                 dim3(kForwardThreads), stream, x.data_ptr<scalar_t>(), geom_acc.data_ptr<acc_t>(),
                 wt.data_ptr<acc_t>(), bias.has_value() ? bias_acc.data_ptr<acc_t>() : nullptr,
                 out.data_ptr<scalar_t>(), s, tpp);
        };
        constexpr int V = kVec16<scalar_t>;
        if (s.C % V == 0 && aligned16(x)) {
          run(depthwise_cl_forward_kernel<scalar_t, acc_t, V, kClForwardChannels / V>, V,
              kClForwardChannels / V);
        } else {
          run(depthwise_cl_forward_kernel<scalar_t, acc_t, 1, kClForwardChannels>, 1,
              kClForwardChannels);
        }
      });
  return out;
}

// out (N, C_out, H, W): channels-last for channels_last_depthwise(x, s), else contiguous.
at::Tensor deform_conv2d_forward_cuda(const at::Tensor& x, const at::Tensor& geom, bool affine,
                                      const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, int64_t groups) {
  const Shape s = check_inputs(x, geom, affine, weight, groups, "deform_conv2d_forward");
  if (bias.has_value()) {
    TORCH_CHECK(
        bias->device().type() == kKernelDevice && bias->is_contiguous() && bias->dim() == 1 &&
            bias->size(0) == s.C_out && bias->scalar_type() == x.scalar_type(),
        "deform_conv2d_forward: bias must be a contiguous CUDA (C_out,) tensor of x's dtype");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor geom_acc = geom.to(acc_type(x.scalar_type()));
  if (channels_last_depthwise(x, s) && s.HW() > 0 && s.N > 0) {
    return forward_channels_last(x, geom_acc, weight, bias, s, stream);
  }
  at::Tensor out = dzsr::new_output({s.N, s.C_out, s.H, s.W}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous();
  const bool depthwise = s.c_in_g() == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "deform_conv2d_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* bias_ptr = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
        auto run = [&](auto kernel, int channel_blocks) {
          const dim3 grid(unsigned((s.HW() + kForwardThreads - 1) / kForwardThreads),
                          unsigned(channel_blocks), unsigned(s.N));
          launch(kernel, grid, dim3(kForwardThreads), stream, xc.data_ptr<scalar_t>(),
                 geom_acc.data_ptr<acc_t>(), weight.data_ptr<scalar_t>(), bias_ptr,
                 out.data_ptr<scalar_t>(), s);
        };
        if (depthwise) {
          run(depthwise_forward_kernel<scalar_t, acc_t, 8>, (s.C_out + 7) / 8);
        } else if (s.c_out_g() >= 32) {
          run(grouped_forward_kernel<scalar_t, acc_t, 32>, s.groups * ((s.c_out_g() + 31) / 32));
        } else {
          run(grouped_forward_kernel<scalar_t, acc_t, 8>, s.groups * ((s.c_out_g() + 7) / 8));
        }
      });
  return out;
}

// Channels-last depthwise backward (channels_last_depthwise(x, s), k^2 * C <= kMaxClWeights, N and
// H * W > 0): fills dx (channels-last), dgeom and dweight, all zero-initialised acc_t.
void backward_channels_last(const at::Tensor& grad_out, const at::Tensor& x,
                            const at::Tensor& geom_acc, const at::Tensor& weight, at::Tensor& dx,
                            at::Tensor& dgeom, at::Tensor& dweight, const Shape& s,
                            cudaStream_t stream) {
  const at::Tensor go = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor wt = tap_major_weights(weight, s, geom_acc.scalar_type());
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "deform_conv2d_backward_cuda_cl", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        auto run = [&](auto kernel, int V) {
          // tpp: about 4 vectors per thread, a power of two <= 32.
          const int nvec = s.C / V;
          int tpp = 1;
          while (tpp < 32 && 8 * tpp <= nvec) tpp *= 2;
          const int64_t blocks =
              (int64_t(s.N) * s.HW() * tpp + kClGradThreads - 1) / kClGradThreads;
          const int64_t grid = std::min<int64_t>(blocks, int64_t(kClGradBlocksPerSm) * sms);
          launch(kernel, dim3(unsigned(grid)), dim3(kClGradThreads), stream,
                 go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), geom_acc.data_ptr<acc_t>(),
                 wt.data_ptr<acc_t>(), dx.data_ptr<acc_t>(), dgeom.data_ptr<acc_t>(),
                 dweight.data_ptr<acc_t>(), s, tpp);
        };
        constexpr int V = kVec16<scalar_t>;
        if (s.C % V == 0 && aligned16(x) && aligned16(go)) {
          run(depthwise_cl_backward_kernel<scalar_t, acc_t, V>, V);
        } else {
          run(depthwise_cl_backward_kernel<scalar_t, acc_t, 1>, 1);
        }
      });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& geom, bool affine,
    const at::Tensor& weight, int64_t groups) {
  const Shape s = check_inputs(x, geom, affine, weight, groups, "deform_conv2d_backward");
  TORCH_CHECK(grad_out.device().type() == kKernelDevice &&
                  grad_out.scalar_type() == x.scalar_type() && grad_out.dim() == 4 &&
                  grad_out.size(0) == s.N && grad_out.size(1) == s.C_out &&
                  grad_out.size(2) == s.H && grad_out.size(3) == s.W,
              "deform_conv2d_backward: grad_out must be a CUDA (N, C_out, H, W) tensor of x's "
              "dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType acc = acc_type(x.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool channels_last =
      channels_last_depthwise(x, s) && s.KK() * s.C <= kMaxClWeights && s.N > 0 && s.HW() > 0;
  // Accumulated by atomics or by the owning thread's +=, so they start at zero.
  at::Tensor dx = channels_last ? new_channels_last(s, s.C, x.options().dtype(acc), true)
                                : at::zeros(x.sizes(), x.options().dtype(acc));
  at::Tensor dgeom = at::zeros(geom.sizes(), geom.options().dtype(acc));
  at::Tensor dweight = at::zeros(weight.sizes(), weight.options().dtype(acc));
  if (channels_last) {
    backward_channels_last(grad_out, x, geom.to(acc), weight, dx, dgeom, dweight, s, stream);
  } else if (s.N > 0 && s.HW() > 0) {
    // C = 0 or C_out = 0 still run the input-gradient kernel: its position gradient is NaN at
    // non-finite positions (and NaN/Inf in x times a zero column gradient), as in the reference.
    const at::Tensor geom_acc = geom.to(acc);
    const at::Tensor xc = x.contiguous(), goc = grad_out.contiguous();
    const bool depthwise = s.c_in_g() == 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "deform_conv2d_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const dim3 grid(unsigned((s.HW() + kGradPixels - 1) / kGradPixels), unsigned(s.N));
          const dim3 block(kGradPixels, kGradBlocksY);
          auto run_input = [&](auto kernel) {
            launch(kernel, grid, block, stream, goc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                   geom_acc.data_ptr<acc_t>(), weight.data_ptr<scalar_t>(), dx.data_ptr<acc_t>(),
                   dgeom.data_ptr<acc_t>(), dweight.data_ptr<acc_t>(), s);
          };
          if (depthwise) {
            run_input(input_grad_kernel<scalar_t, acc_t, 1, true>);
          } else if (s.c_in_g() >= 32) {
            run_input(input_grad_kernel<scalar_t, acc_t, 8, false>);
          } else {
            run_input(input_grad_kernel<scalar_t, acc_t, 1, false>);
          }
          const int64_t weight_tiles = int64_t(s.groups) * ((s.c_out_g() + kTile - 1) / kTile) *
                                       ((s.c_in_g() + kTile - 1) / kTile);
          if (!depthwise && weight_tiles > 0) {
            const int64_t tiles = (s.HW() + kTile - 1) / kTile;
            const int64_t weight_blocks = weight_tiles * s.KK();
            // Enough blocks to fill the device a few times over; each sums tiles_per_chunk pixel
            // tiles.
            TORCH_CHECK(weight_blocks <= 65535,
                        "deform_conv2d_backward: groups * k^2 * weight tiles = ", weight_blocks,
                        " exceeds the CUDA grid limit 65535");
            int sms = 0;
            C10_CUDA_CHECK(
                cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
            const int64_t target = 8 * int64_t(sms);
            const int64_t chunks =
                std::max<int64_t>(1, std::min<int64_t>(tiles, target / (weight_blocks * s.N) + 1));
            const int tiles_per_chunk = int((tiles + chunks - 1) / chunks);
            const dim3 wgrid(unsigned((tiles + tiles_per_chunk - 1) / tiles_per_chunk),
                             unsigned(weight_blocks), unsigned(s.N));
            launch(weight_grad_kernel<scalar_t, acc_t>, wgrid, dim3(256), stream,
                   goc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), geom_acc.data_ptr<acc_t>(),
                   dweight.data_ptr<acc_t>(), s, tiles_per_chunk);
          }
        });
  }
  const at::ScalarType dtype = x.scalar_type();
  return {dx.to(dtype), dgeom.to(dtype), dweight.to(dtype)};
}

}  // namespace
}  // namespace deform
}  // namespace dzsr

#ifndef DZSR_CUDA_EMULATION
TORCH_LIBRARY_IMPL(dzsr_C, CUDA, m) {
  m.impl("deform_conv2d_forward", &dzsr::deform::deform_conv2d_forward_cuda);
  m.impl("deform_conv2d_backward", &dzsr::deform::deform_conv2d_backward_cuda);
}
#endif
