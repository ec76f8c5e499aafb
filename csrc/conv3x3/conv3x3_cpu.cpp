// 3x3 convolution (stride 1, zero padding 1) on the CPU by Winograd's minimal filtering F(4x4, 3x3)
// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//
// Every 4x4 block of output pixels ("tile", on a grid anchored at pixel (0, 0)) is computed from
// the 6x6 input window around it: V = B^T d B per input channel, M[e] = V[e] U[e] for each of the
// 36 elements e (a GEMM over input channels with the transformed filters U = G g G^T), and the
// output A^T M A. That is 36 multiply-adds per tile and channel pair where direct convolution
// needs 144, so the GEMMs do a quarter of the arithmetic of oneDNN's direct kernels.
//
// Work is split into blocks of kBlockTiles tiles of one tile row; a thread keeps a block's V and M
// in its own buffers (sized to stay in L2) through the input transform, the GEMMs (a 6 x 2-vector
// register micro-kernel) and the output transform, so neither V nor M is ever written to memory
// whole. Channels are the vector lanes (input and output are channels-last), so the transforms
// are vector adds of whole pixels. float32 and float64 share the code.
//
// Epilogue: the output transform also adds an optional residual (same shape as the output) and
// applies an optional ReLU (slope 0, NaN-propagating like torch.relu) or LeakyReLU (slope > 0)
// while the tile is in registers, so the model's "conv + skip" and "conv + activation" pairs
// write their output once instead of writing it and reading it back.
//
// Exactness: every output pixel's arithmetic depends only on its tile's 6x6 input window and its
// position in the tile, so on a crop whose origin is a multiple of 4 pixels every tile whose window
// reads no padding of the crop reproduces the whole image's values bit for bit (dzsr/infer.py
// aligns its tile windows so). Rounding: the
// transforms add a few ulps over direct convolution (docs/design.md#winograd-convolution).
// Non-finite values: a NaN or inf in a window would spread through the transforms to every output
// of its tile, so a NaN, an inf or a value too large for the transforms to stay finite (bounds in
// conv3x3_cpu) in x, weight or bias makes the whole call run at::conv2d, the reference: such
// inputs give exactly the reference's output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"

namespace dzsr {
namespace conv3x3 {
namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

// One SIMD register of T (GCC/Clang vector extensions: the compiler emits the -march ISA's
// instructions) and its unaligned-access twin.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
  typedef float unaligned __attribute__((vector_size(kVectorBytes), aligned(4)));
};
template <>
struct Simd<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
  typedef double unaligned __attribute__((vector_size(kVectorBytes), aligned(8)));
};

template <typename T>
constexpr int kLanes = kVectorBytes / sizeof(T);
constexpr int kRows = 6;          // tiles per micro-kernel call
constexpr int kBlockTiles = 12;   // tiles per block (a multiple of kRows)
constexpr int64_t kTileSize = 4;  // output pixels per tile side
constexpr int kWindow = 6;        // input pixels per tile window side
constexpr int kElements = kWindow * kWindow;

// L is either Simd<T>::type (kLanes<T> channels) or T (one channel, for the tail).
template <typename T, typename L>
inline L load(const T* p) {
  if constexpr (std::is_same_v<L, T>) {
    return *p;
  } else {
    return *reinterpret_cast<const typename Simd<T>::unaligned*>(p);
  }
}

template <typename T, typename L>
inline void store(T* p, L v) {
  if constexpr (std::is_same_v<L, T>) {
    *p = v;
  } else {
    *reinterpret_cast<typename Simd<T>::unaligned*>(p) = v;
  }
}

// B^T z for a column z of the 6x6 window: the six rows of F(4x4, 3x3)'s input transform.
template <typename L>
inline void input_rows(const L z[6], L out[6]) {
  out[0] = 4 * z[0] - 5 * z[2] + z[4];
  out[1] = z[3] + z[4] - 4 * (z[1] + z[2]);
  out[2] = 4 * (z[1] - z[2]) - z[3] + z[4];
  out[3] = z[4] - z[2] - 2 * (z[1] - z[3]);
  out[4] = z[4] - z[2] + 2 * (z[1] - z[3]);
  out[5] = 4 * z[1] - 5 * z[3] + z[5];
}

// A^T z for a column z of M: the four rows of the output transform.
template <typename L>
inline void output_rows(const L z[6], L out[4]) {
  const L a = z[1] + z[2], b = z[1] - z[2], c = z[3] + z[4], d = z[3] - z[4];
  out[0] = z[0] + a + c;
  out[1] = b + 2 * d;
  out[2] = a + 4 * c;
  out[3] = b + 8 * d + z[5];
}

// Input transform of channels [c, c + lanes) of one tile whose window starts at (y0, x0) (may be
// outside the image: zero padding): V[e * e_stride + c]. Returns false if a value lies outside
// [-limit, limit] or is NaN.
template <typename T, typename L>
inline bool transform_input(const T* x, int64_t height, int64_t width, int64_t channels, int64_t y0,
                            int64_t x0, int64_t c, T limit, T* v, int64_t e_stride) {
  L d[kWindow][kWindow];
  bool ok = true;
  for (int i = 0; i < kWindow; ++i) {
    const int64_t y = y0 + i;
    for (int j = 0; j < kWindow; ++j) {
      const int64_t xx = x0 + j;
      if (y >= 0 && y < height && xx >= 0 && xx < width) {
        d[i][j] = load<T, L>(x + (y * width + xx) * channels + c);
      } else {
        d[i][j] = L{};
      }
    }
  }
  if constexpr (std::is_same_v<L, T>) {
    for (int i = 0; i < kWindow; ++i) {
      for (int j = 0; j < kWindow; ++j) ok &= d[i][j] <= limit && d[i][j] >= -limit;
    }
  } else {
    auto inside = (d[0][0] <= limit) & (d[0][0] >= -limit);  // lanes: -1 in range, 0 outside or NaN
    for (int i = 0; i < kWindow; ++i) {
      for (int j = 0; j < kWindow; ++j) inside &= (d[i][j] <= limit) & (d[i][j] >= -limit);
    }
    for (int k = 0; k < kLanes<T>; ++k) ok &= inside[k] != 0;
  }
  L columns[kWindow][kWindow];  // columns[j] = B^T d[:, j]
  for (int j = 0; j < kWindow; ++j) {
    L z[kWindow];
    for (int i = 0; i < kWindow; ++i) z[i] = d[i][j];
    input_rows(z, columns[j]);
  }
  for (int i = 0; i < kWindow; ++i) {
    L z[kWindow], out[kWindow];
    for (int j = 0; j < kWindow; ++j) z[j] = columns[j][i];
    input_rows(z, out);
    for (int j = 0; j < kWindow; ++j) store<T, L>(v + (i * kWindow + j) * e_stride + c, out[j]);
  }
  return ok;
}

// The epilogue fused into the output transform: out = act(conv + bias + residual), residual
// (channels-last like y) optional, act the identity, ReLU (slope 0) or LeakyReLU(slope).
template <typename T>
struct Epilogue {
  const T* residual;  // nullptr: none
  bool activate;
  T slope;
};

// torch's ReLU and LeakyReLU, NaN propagating (NaN < 0 and NaN > 0 are both false).
template <typename T, typename L>
inline L activation(L v, T slope) {
  if (slope == T(0)) return v < T(0) ? L{} : v;
  return v > T(0) ? v : v * slope;
}

// Output transform of channels [c, c + lanes) of one tile: the epilogue of A^T M A + bias, written
// to the pixels of the 4x4 block at (y0, x0) that lie inside the image.
template <typename T, typename L>
inline void transform_output(const T* m, int64_t e_stride, int64_t c, const T* bias,
                             const Epilogue<T>& epilogue, T* y, int64_t height, int64_t width,
                             int64_t channels, int64_t y0, int64_t x0) {
  L rows[kTileSize][kWindow];  // rows[:, j] = A^T M[:, j]
  for (int j = 0; j < kWindow; ++j) {
    L z[kWindow], out[kTileSize];
    for (int i = 0; i < kWindow; ++i) z[i] = load<T, L>(m + (i * kWindow + j) * e_stride + c);
    output_rows(z, out);
    for (int i = 0; i < kTileSize; ++i) rows[i][j] = out[i];
  }
  const L b = load<T, L>(bias + c);
  for (int i = 0; i < kTileSize && y0 + i < height; ++i) {
    L out[kTileSize];
    output_rows(rows[i], out);
    for (int j = 0; j < kTileSize && x0 + j < width; ++j) {
      const int64_t at = ((y0 + i) * width + x0 + j) * channels + c;
      L v = out[j] + b;
      if (epilogue.residual != nullptr) v += load<T, L>(epilogue.residual + at);
      if (epilogue.activate) v = activation<T, L>(v, epilogue.slope);
      store<T, L>(y + at, v);
    }
  }
}

// m[r][0 : 2 lanes] = sum_k v[r][k] u[k][0 : 2 lanes] for the kRows tiles of v (rows v_stride
// apart); u's rows are u_stride apart, m's m_stride.
template <typename T>
inline void gemm_rows(const T* v, int64_t v_stride, const T* u, int64_t u_stride, int64_t depth,
                      T* m, int64_t m_stride) {
  using V = typename Simd<T>::type;
  V acc[kRows][2];
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = V{};
  for (int64_t k = 0; k < depth; ++k) {
    const V u0 = load<T, V>(u + k * u_stride), u1 = load<T, V>(u + k * u_stride + kLanes<T>);
    for (int r = 0; r < kRows; ++r) {
      const T a = v[r * v_stride + k];
      acc[r][0] += a * u0;
      acc[r][1] += a * u1;
    }
  }
  for (int r = 0; r < kRows; ++r) {
    store<T, V>(m + r * m_stride, acc[r][0]);
    store<T, V>(m + r * m_stride + kLanes<T>, acc[r][1]);
  }
}

// The transformed filters U[e][ci][co] = (G g[co][ci] G^T)[e], computed in double and rounded
// once, with co zero-padded to `padded` columns. w is contiguous (C', C, 3, 3).
template <typename T>
at::Tensor transform_weight(const at::Tensor& weight, int64_t padded) {
  static constexpr double g[kWindow][3] = {{1.0 / 4, 0, 0},
                                           {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                           {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                           {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                           {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                           {0, 0, 1}};
  const int64_t out_channels = weight.size(0), in_channels = weight.size(1);
  auto u = at::zeros({kElements, in_channels, padded}, weight.options());
  const T* w = weight.const_data_ptr<T>();
  T* up = u.mutable_data_ptr<T>();
  at::parallel_for(0, out_channels * in_channels, 64, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t co = pair / in_channels, ci = pair % in_channels;
      const T* f = w + pair * 9;
      double gf[kWindow][3];  // G f
      for (int a = 0; a < kWindow; ++a) {
        for (int l = 0; l < 3; ++l) {
          gf[a][l] = g[a][0] * f[l] + g[a][1] * f[3 + l] + g[a][2] * f[6 + l];
        }
      }
      for (int a = 0; a < kWindow; ++a) {
        for (int b = 0; b < kWindow; ++b) {
          const double e = gf[a][0] * g[b][0] + gf[a][1] * g[b][1] + gf[a][2] * g[b][2];
          up[((a * kWindow + b) * in_channels + ci) * padded + co] = static_cast<T>(e);
        }
      }
    }
  });
  return u;
}

// Writes y (channels-last) from x, the transformed filters u, the padded bias and the epilogue
// (its residual pointing at sample 0); false (y then incomplete) if an input value lies outside
// [-limit, limit] or is NaN.
template <typename T>
bool winograd(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias,
              const Epilogue<T>& epilogue, T limit, at::Tensor& y) {
  using V = typename Simd<T>::type;
  constexpr int lanes = kLanes<T>;
  const int64_t batch = x.size(0), in_channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_channels = y.size(1), padded = u.size(2);
  const int64_t tile_rows = (height + kTileSize - 1) / kTileSize;
  const int64_t tile_cols = (width + kTileSize - 1) / kTileSize;
  const int64_t blocks = (tile_cols + kBlockTiles - 1) / kBlockTiles;
  const int64_t v_estride = kBlockTiles * in_channels, m_estride = kBlockTiles * padded;
  const T* xp = x.const_data_ptr<T>();
  const T* up = u.const_data_ptr<T>();
  const T* bp = bias.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const int64_t vector_in = in_channels / lanes * lanes, vector_out = out_channels / lanes * lanes;
  std::atomic<bool> in_range{true};
  at::parallel_for(0, batch * tile_rows * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> v(kElements * v_estride), m(kElements * m_estride);
    bool ok = true;
    for (int64_t job = begin; job < end && in_range.load(std::memory_order_relaxed); ++job) {
      const int64_t n = job / (tile_rows * blocks), row = job / blocks % tile_rows;
      const int64_t first = job % blocks * kBlockTiles;
      const int64_t tiles = std::min<int64_t>(kBlockTiles, tile_cols - first);
      const T* xn = xp + n * height * width * in_channels;
      T* yn = yp + n * height * width * out_channels;
      Epilogue<T> en = epilogue;
      if (en.residual != nullptr) en.residual += n * height * width * out_channels;
      const int64_t y0 = row * kTileSize;
      for (int64_t t = 0; t < kBlockTiles; ++t) {
        T* vt = v.data() + t * in_channels;
        if (t >= tiles) {  // padding rows of the last block: zeros, their outputs are dropped
          for (int e = 0; e < kElements; ++e) std::fill_n(vt + e * v_estride, in_channels, T(0));
          continue;
        }
        const int64_t x0 = (first + t) * kTileSize;
        int64_t c = 0;
        for (; c < vector_in; c += lanes) {
          ok &= transform_input<T, V>(xn, height, width, in_channels, y0 - 1, x0 - 1, c, limit, vt,
                                      v_estride);
        }
        for (; c < in_channels; ++c) {
          ok &= transform_input<T, T>(xn, height, width, in_channels, y0 - 1, x0 - 1, c, limit, vt,
                                      v_estride);
        }
      }
      for (int e = 0; e < kElements; ++e) {
        for (int64_t co = 0; co < padded; co += 2 * lanes) {
          for (int64_t t = 0; t < kBlockTiles; t += kRows) {
            gemm_rows(v.data() + e * v_estride + t * in_channels, in_channels,
                      up + e * in_channels * padded + co, padded, in_channels,
                      m.data() + e * m_estride + t * padded + co, padded);
          }
        }
      }
      for (int64_t t = 0; t < tiles; ++t) {
        const T* mt = m.data() + t * padded;
        const int64_t x0 = (first + t) * kTileSize;
        int64_t c = 0;
        for (; c < vector_out; c += lanes) {
          transform_output<T, V>(mt, m_estride, c, bp, en, yn, height, width, out_channels, y0, x0);
        }
        for (; c < out_channels; ++c) {
          transform_output<T, T>(mt, m_estride, c, bp, en, yn, height, width, out_channels, y0, x0);
        }
      }
      if (!ok) in_range.store(false, std::memory_order_relaxed);
    }
  });
  return in_range.load();
}

// The filter, bias and epilogue set-up of one call in T, then the kernel; false as for winograd.
template <typename T>
bool run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         const std::optional<at::Tensor>& residual, std::optional<double> negative_slope,
         double limit, at::Tensor& y) {
  const int64_t out_channels = weight.size(0), block = 2 * kLanes<T>;
  const int64_t padded = (out_channels + block - 1) / block * block;
  const auto u = transform_weight<T>(weight.contiguous(), padded);
  auto b = at::zeros({padded}, x.options());
  if (bias.has_value()) b.narrow(0, 0, out_channels).copy_(*bias);
  at::Tensor r;
  if (residual.has_value()) r = residual->contiguous(at::MemoryFormat::ChannelsLast);
  const Epilogue<T> epilogue{r.defined() ? r.const_data_ptr<T>() : nullptr,
                             negative_slope.has_value(),
                             static_cast<T>(negative_slope.value_or(0.0))};
  return winograd<T>(x.contiguous(at::MemoryFormat::ChannelsLast), u, b, epilogue,
                     static_cast<T>(limit), y);
}

at::Tensor conv3x3_cpu(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual,
                       std::optional<double> negative_slope) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == x.size(1) &&
                  weight.size(2) == 3 && weight.size(3) == 3,
              "conv3x3: x (N,C,H,W) and weight (C',C,3,3) expected");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "conv3x3: float32 or float64 x and weight of one dtype expected");
  TORCH_CHECK(!residual.has_value() ||
                  (residual->scalar_type() == x.scalar_type() && residual->dim() == 4 &&
                   residual->size(0) == x.size(0) && residual->size(1) == weight.size(0) &&
                   residual->size(2) == x.size(2) && residual->size(3) == x.size(3)),
              "conv3x3: residual must be (N,C',H,W) in x's dtype");
  const int64_t out_channels = weight.size(0), in_channels = x.size(1);
  auto y = new_output({x.size(0), out_channels, x.size(2), x.size(3)}, x.options(),
                      at::MemoryFormat::ChannelsLast);
  const auto reference = [&] {  // dzsr_kernels/conv3x3/reference.py, op by op
    at::Tensor z = at::conv2d(x, weight, bias, 1, 1);
    if (residual.has_value()) z = z + *residual;
    if (negative_slope.has_value())
      z = *negative_slope == 0.0 ? at::relu(z) : at::leaky_relu(z, *negative_slope);
    y.copy_(z);
    return y;
  };
  if (y.numel() == 0) return y;
  if (in_channels == 0) return reference();
  // The transforms cannot overflow while |x| |w| 9 C 10^2 19^2 stays finite (the input transform
  // grows values at most 10x per axis, G shrinks them, the output transform grows them at most 19x
  // per axis; a million-fold margin): a larger, NaN or inf weight, bias or input runs the
  // reference instead.
  const double weight_max = weight.abs().max().item<double>();
  const double finite_max = x.scalar_type() == at::kFloat ? std::numeric_limits<float>::max()
                                                          : std::numeric_limits<double>::max();
  const double bound = finite_max / 1e6 / (static_cast<double>(in_channels) * 9 * 100 * 361);
  const double bias_max = bias.has_value() && bias->numel() ? bias->abs().max().item<double>() : 0;
  if (!(weight_max <= bound) || !(bias_max <= bound)) return reference();
  const double limit = std::min(bound, bound / std::max(weight_max, 1.0));
  const bool ok = x.scalar_type() == at::kFloat
                      ? run<float>(x, weight, bias, residual, negative_slope, limit, y)
                      : run<double>(x, weight, bias, residual, negative_slope, limit, y);
  return ok ? y : reference();
}

}  // namespace
}  // namespace conv3x3
}  // namespace dzsr

TORCH_LIBRARY_IMPL(dzsr_C, CPU, m) { m.impl("conv3x3", &dzsr::conv3x3::conv3x3_cpu); }
