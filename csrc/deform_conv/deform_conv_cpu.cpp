// CPU kernels of the packed deformable convolution (stride 1, padding k/2): forward and backward.
//
// Work is split into blocks of kBlock flat output pixels. Each block computes its k^2 taps'
// sampling geometry once (deform_conv_math.h) and reuses it for every channel, so nothing of size
// C*k^2*H*W is ever allocated. Per group with one input channel (depthwise, with any channel
// multiplier) the kernels loop directly; otherwise a column tile (C_in*k^2 x kBlock) feeds a GEMM.
// The forward of a one-group convolution gathers that tile from channels-last slices of x
// (dense_cl_forward), the other grouped cases from the planar input.
//
// Backward runs two passes, each free of write races:
//   1. tasks (n, pixel block): position gradients -> dgeom (the block owns its pixels) and dweight
//      (thread-local accumulators, summed at the end);
//   2. tasks (n, input-channel chunk): the bilinear scatter into dx (the chunk owns its planes).
// Every output is a new tensor in its input's dtype, contiguous except the forward of a
// channels-last depthwise convolution, channels-last as x (op.py's fakes say the same). Empty N, H
// or W return at once (empty dx/dgeom, zero dweight); C = 0 or C_out = 0 run the loops, which then
// sum nothing.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "common.h"
#include "deform_conv/deform_conv_math.h"

namespace dzsr {
namespace deform {
namespace {

constexpr int64_t kBlock = 256;

struct Geometry {
  int64_t N, C, H, W, HW, Cout, groups, cin_g, cout_g, k, K, geom_ch;
  bool affine;
};

Geometry make_geometry(const at::Tensor& x, const at::Tensor& geom, bool affine,
                       const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(x.dim() == 4 && geom.dim() == 4 && weight.dim() == 4,
              "deform_conv2d: x, geom, weight must be 4-D");
  TORCH_CHECK((x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) &&
                  geom.is_contiguous() && weight.is_contiguous(),
              "deform_conv2d: inputs must be contiguous (x may be channels-last)");
  Geometry g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.HW = g.H * g.W;
  g.Cout = weight.size(0);
  g.groups = groups;
  g.cin_g = g.C / groups;
  g.cout_g = g.Cout / groups;
  g.k = weight.size(2);
  g.K = g.k * g.k;
  g.affine = affine;
  g.geom_ch = affine ? 6 : 2 * g.K;
  TORCH_CHECK(g.HW < (int64_t(1) << 31), "deform_conv2d: H*W must fit in int32");
  TORCH_CHECK(geom.size(1) == g.geom_ch && geom.size(0) == g.N && geom.size(2) == g.H &&
                  geom.size(3) == g.W,
              "deform_conv2d: geom has the wrong shape");
  TORCH_CHECK(weight.size(1) == g.cin_g && g.C % groups == 0 && g.Cout % groups == 0,
              "deform_conv2d: weight/groups mismatch");
  return g;
}

// taps[i*K + t] for the np pixels starting at flat pixel p0 of sample n.
template <typename T>
void fill_taps(const T* geom_n, const Geometry& g, int64_t p0, int64_t np, Taps<T>* taps) {
  for (int64_t i = 0; i < np; ++i) {
    const int64_t pix = p0 + i;
    const int qy = static_cast<int>(pix / g.W), qx = static_cast<int>(pix % g.W);
    for (int t = 0; t < g.K; ++t) {
      T py, px;
      tap_position(geom_n, g.HW, pix, g.affine, t, static_cast<int>(g.k), qy, qx, py, px);
      bilinear_taps(py, px, static_cast<int>(g.H), static_cast<int>(g.W), taps[i * g.K + t]);
    }
  }
}

// Matrix views for the GEMM path: a (rows x cols) matrix at `data` with row stride `ld`.
template <typename T>
at::Tensor view(T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(data, {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

template <typename T>
void forward_impl(const T* x, const T* geom, const T* w, const T* bias, T* out, const Geometry& g) {
  const int64_t nblocks = (g.HW + kBlock - 1) / kBlock;
  const bool direct = g.cin_g == 1;
  at::parallel_for(0, g.N * nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Taps<T>> taps(kBlock * g.K);
    std::vector<T> cols(direct ? 0 : g.C * g.K * kBlock);
    std::vector<T> acc(direct ? 0 : g.cout_g * kBlock);
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t n = task / nblocks, p0 = (task % nblocks) * kBlock,
                    np = std::min(kBlock, g.HW - p0);
      fill_taps(geom + n * g.geom_ch * g.HW, g, p0, np, taps.data());
      const T* xn = x + n * g.C * g.HW;
      T* outn = out + n * g.Cout * g.HW + p0;
      if (direct) {
        for (int64_t o = 0; o < g.Cout; ++o) {
          const T* plane = xn + (o / g.cout_g) * g.HW;
          const T* wo = w + o * g.K;
          const T b = bias ? bias[o] : T(0);
          for (int64_t i = 0; i < np; ++i) {
            const Taps<T>* ti = taps.data() + i * g.K;
            T s = b;
            for (int t = 0; t < g.K; ++t) s += wo[t] * sample(plane, ti[t]);
            outn[o * g.HW + i] = s;
          }
        }
        continue;
      }
      for (int64_t i = 0; i < np; ++i)
        for (int64_t c = 0; c < g.C; ++c)
          for (int t = 0; t < g.K; ++t)
            cols[(c * g.K + t) * np + i] = sample(xn + c * g.HW, taps[i * g.K + t]);
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        auto res = view(acc.data(), g.cout_g, np, np);
        at::mm_out(res,
                   view(const_cast<T*>(w) + gi * g.cout_g * g.cin_g * g.K, g.cout_g, g.cin_g * g.K,
                        g.cin_g * g.K),
                   view(cols.data() + gi * g.cin_g * g.K * np, g.cin_g * g.K, np, np));
        for (int64_t o = 0; o < g.cout_g; ++o) {
          const int64_t oc = gi * g.cout_g + o;
          const T b = bias ? bias[oc] : T(0);
          for (int64_t i = 0; i < np; ++i) outn[oc * g.HW + i] = acc[o * np + i] + b;
        }
      }
    }
  });
}

// Pass 1: geometry gradient and weight gradient.
template <typename T>
void backward_geom_weight(const T* gout, const T* x, const T* geom, const T* w, T* dgeom,
                          T* dweight, const Geometry& g) {
  const int64_t nblocks = (g.HW + kBlock - 1) / kBlock;
  const bool direct = g.cin_g == 1;
  const int64_t wsize = g.Cout * g.cin_g * g.K;
  const int nthreads = at::get_num_threads();
  std::vector<T> dw_local(static_cast<size_t>(nthreads) * wsize, T(0));
  at::parallel_for(0, g.N * nblocks, 1, [&](int64_t b0, int64_t b1) {
    T* dw = dw_local.data() + at::get_thread_num() * wsize;
    std::vector<Taps<T>> taps(kBlock * g.K);
    std::vector<T> cols(direct ? 0 : g.C * g.K * kBlock);
    std::vector<T> gcols(direct ? 0 : g.C * g.K * kBlock);
    std::vector<T> gpy(g.K), gpx(g.K), gg(g.geom_ch);
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t n = task / nblocks, p0 = (task % nblocks) * kBlock,
                    np = std::min(kBlock, g.HW - p0);
      fill_taps(geom + n * g.geom_ch * g.HW, g, p0, np, taps.data());
      const T* xn = x + n * g.C * g.HW;
      const T* gn = gout + n * g.Cout * g.HW + p0;
      if (!direct) {
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          auto res = view(gcols.data() + gi * g.cin_g * g.K * np, g.cin_g * g.K, np, np);
          at::mm_out(res,
                     view(const_cast<T*>(w) + gi * g.cout_g * g.cin_g * g.K, g.cout_g,
                          g.cin_g * g.K, g.cin_g * g.K)
                         .t(),
                     view(const_cast<T*>(gn) + gi * g.cout_g * g.HW, g.cout_g, np, g.HW));
        }
      }
      for (int64_t i = 0; i < np; ++i) {
        const Taps<T>* ti = taps.data() + i * g.K;
        for (int t = 0; t < g.K; ++t) gpy[t] = gpx[t] = ti[t].bad;
        if (direct) {
          // Input channel c feeds output channels [c*cout_g, (c+1)*cout_g): its column gradient is
          // their sum of go * w, multiplied once by the sample's derivative (the reference's
          // grouping).
          for (int64_t c = 0; c < g.C; ++c) {
            const T* plane = xn + c * g.HW;
            for (int t = 0; t < g.K; ++t) {
              T v, dvy, dvx;
              sample_with_grad(plane, ti[t], v, dvy, dvx);
              T dcol = T(0);
              for (int64_t o = c * g.cout_g; o < (c + 1) * g.cout_g; ++o) {
                const T go = gn[o * g.HW + i];
                dw[o * g.K + t] += go * v;
                dcol += go * w[o * g.K + t];
              }
              gpy[t] += dcol * dvy;
              gpx[t] += dcol * dvx;
            }
          }
        } else {
          for (int64_t c = 0; c < g.C; ++c) {
            const T* plane = xn + c * g.HW;
            for (int t = 0; t < g.K; ++t) {
              T v, dvy, dvx;
              sample_with_grad(plane, ti[t], v, dvy, dvx);
              const int64_t row = (c * g.K + t) * np + i;
              cols[row] = v;
              gpy[t] += gcols[row] * dvy;
              gpx[t] += gcols[row] * dvx;
            }
          }
        }
        std::fill(gg.begin(), gg.end(), T(0));
        for (int t = 0; t < g.K; ++t)
          accumulate_geom_grad(gg.data(), 1, 0, g.affine, t, static_cast<int>(g.k), gpy[t], gpx[t]);
        T* dgn = dgeom + n * g.geom_ch * g.HW + p0 + i;
        for (int64_t ch = 0; ch < g.geom_ch; ++ch) dgn[ch * g.HW] = gg[ch];
      }
      if (!direct) {
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          auto dwg =
              view(dw + gi * g.cout_g * g.cin_g * g.K, g.cout_g, g.cin_g * g.K, g.cin_g * g.K);
          dwg.addmm_(view(const_cast<T*>(gn) + gi * g.cout_g * g.HW, g.cout_g, np, g.HW),
                     view(cols.data() + gi * g.cin_g * g.K * np, g.cin_g * g.K, np, np).t());
        }
      }
    }
  });
  std::fill(dweight, dweight + wsize, T(0));
  for (int th = 0; th < nthreads; ++th)
    for (int64_t j = 0; j < wsize; ++j) dweight[j] += dw_local[th * wsize + j];
}

// Pass 2: dx by scattering each sample's gradient into the four corners; a task owns a chunk of
// input channels of one sample, so no two tasks write the same plane.
template <typename T>
void backward_input(const T* gout, const T* geom, const T* w, T* dx, const Geometry& g) {
  if (g.N == 0 || g.C == 0) return;
  const int64_t nblocks = (g.HW + kBlock - 1) / kBlock;
  const bool direct = g.cin_g == 1;
  const int64_t chunks_per_n =
      std::clamp<int64_t>((4 * at::get_num_threads() + g.N - 1) / g.N, 1, g.C);
  const int64_t cs = (g.C + chunks_per_n - 1) / chunks_per_n;
  at::parallel_for(0, g.N * chunks_per_n, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Taps<T>> taps(kBlock * g.K);
    std::vector<T> gcols(direct ? 0 : std::min(cs, g.cin_g) * g.K * kBlock);
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t n = task / chunks_per_n;
      const int64_t c0 = (task % chunks_per_n) * cs, c1 = std::min(g.C, c0 + cs);
      if (c0 >= c1) continue;
      T* dxn = dx + n * g.C * g.HW;
      const T* gn_all = gout + n * g.Cout * g.HW;
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t p0 = blk * kBlock, np = std::min(kBlock, g.HW - p0);
        fill_taps(geom + n * g.geom_ch * g.HW, g, p0, np, taps.data());
        const T* gn = gn_all + p0;
        if (direct) {
          for (int64_t c = c0; c < c1; ++c) {
            T* plane = dxn + c * g.HW;
            for (int64_t o = c * g.cout_g; o < (c + 1) * g.cout_g; ++o) {
              const T* wo = w + o * g.K;
              for (int64_t i = 0; i < np; ++i) {
                const T go = gn[o * g.HW + i];
                const Taps<T>* ti = taps.data() + i * g.K;
                for (int t = 0; t < g.K; ++t) {
                  const T gp = go * wo[t];
                  for (int cr = 0; cr < 4; ++cr)
                    if (ti[t].idx[cr] >= 0) plane[ti[t].idx[cr]] += gp * ti[t].w[cr];
                }
              }
            }
          }
          continue;
        }
        // Split [c0, c1) at group boundaries; each piece's gradient columns come from one GEMM.
        for (int64_t a = c0; a < c1;) {
          const int64_t gi = a / g.cin_g, e = std::min(c1, (gi + 1) * g.cin_g),
                        rows = (e - a) * g.K;
          auto res = view(gcols.data(), rows, np, np);
          const T* wg = w + gi * g.cout_g * g.cin_g * g.K + (a - gi * g.cin_g) * g.K;
          at::mm_out(res, view(const_cast<T*>(wg), g.cout_g, rows, g.cin_g * g.K).t(),
                     view(const_cast<T*>(gn) + gi * g.cout_g * g.HW, g.cout_g, np, g.HW));
          for (int64_t c = a; c < e; ++c) {
            T* plane = dxn + c * g.HW;
            for (int t = 0; t < g.K; ++t) {
              const T* gc = gcols.data() + ((c - a) * g.K + t) * np;
              for (int64_t i = 0; i < np; ++i) {
                const Taps<T>& s = taps[i * g.K + t];
                for (int cr = 0; cr < 4; ++cr)
                  if (s.idx[cr] >= 0) plane[s.idx[cr]] += gc[i] * s.w[cr];
              }
            }
          }
          a = e;
        }
      }
    }
  });
}

// Channel-vectorised path for pure depthwise convolutions (one input and one output channel per
// group, the AdaSTN case): with channels last, the four corners of a sample are contiguous
// C-vectors, so every inner loop runs over channels in SIMD registers. The channels-last copies are
// made one slice of channels at a time, each slice at most 16 MiB of x (at least 8 channels), so
// large images cost bounded extra memory; DZSR_DEFORM_CHANNELS_LAST_MAX_BYTES changes that budget
// and 0 selects the planar kernels instead.
int64_t channels_last_width(const Geometry& g, int64_t elem_size) {
  const char* env = std::getenv("DZSR_DEFORM_CHANNELS_LAST_MAX_BYTES");
  const int64_t budget = env ? std::atoll(env) : (int64_t(16) << 20);
  if (budget <= 0) return 0;
  const int64_t fit = budget / std::max<int64_t>(1, g.N * g.HW * elem_size);
  return std::min(g.C, std::max<int64_t>(8, fit / 8 * 8));
}

int64_t channels_last_slice(const Geometry& g, int64_t elem_size) {
  return g.cin_g == 1 && g.cout_g == 1 ? channels_last_width(g, elem_size) : 0;
}

// The dense forward (one group, several input channels) gathers its columns from the same
// channels-last slices (dense_cl_forward); other grouped convolutions use the planar kernels.
int64_t dense_channels_last_slice(const Geometry& g, int64_t elem_size) {
  return g.groups == 1 && g.C > 1 ? channels_last_width(g, elem_size) : 0;
}

// The geometry of channels [c0, c0 + width) of a pure depthwise convolution.
Geometry channel_slice(Geometry g, int64_t width) {
  g.C = g.Cout = g.groups = width;
  return g;
}

// Channels-last slice buffers, allocated once per call at the widest slice and reused for every
// slice (fresh 16 MiB allocations per slice would grow the heap, not the working set).
struct SliceBuffer {
  at::Tensor storage;
  SliceBuffer(const Geometry& g, int64_t width, const at::TensorOptions& o)
      : storage(at::empty({g.N * g.HW * width}, o)) {}
  // A contiguous (N, HW, width) view of the first N*HW*width elements.
  at::Tensor view(const Geometry& g, int64_t width) const {
    return storage.narrow(0, 0, g.N * g.HW * width).view({g.N, g.HW, width});
  }
  // (N, width, H, W) planes -> this buffer as (N, HW, width).
  at::Tensor load(const Geometry& g, const at::Tensor& planes) const {
    auto v = view(g, planes.size(1));
    v.copy_(planes.flatten(2).transpose(1, 2));
    return v;
  }
};

// (N, HW, width) -> (N, width, H, W)
void store_planes(const at::Tensor& slice, at::Tensor planes) {
  planes.copy_(
      slice.transpose(1, 2).view({planes.size(0), planes.size(1), planes.size(2), planes.size(3)}));
}

// Rows of a sample's four corners in a channels-last (HW, C) image. An outside corner reads a row
// of zeros; every corner of a non-finite position reads a row of NaNs (its weights are 0, so the
// sample and its derivatives are NaN). `fill` is fill_rows(C): C zeros, then C NaNs.
template <typename T>
struct CornerRows {
  const T* r[4];
  CornerRows(const T* xn, const Taps<T>& s, int64_t C, const T* fill) {
    const T* outside = s.bad == T(0) ? fill : fill + C;
    for (int c = 0; c < 4; ++c) r[c] = s.idx[c] >= 0 ? xn + s.idx[c] * C : outside;
  }
};

template <typename T>
std::vector<T> fill_rows(int64_t C) {
  std::vector<T> fill(2 * C, T(0));
  std::fill(fill.begin() + C, fill.end(), static_cast<T>(NAN));
  return fill;
}

template <typename T>
void depthwise_cl_forward(const T* xt, const T* geom, const T* wt, const T* bias, T* outt,
                          const Geometry& g) {
  const int64_t nblocks = (g.HW + kBlock - 1) / kBlock, C = g.C;
  at::parallel_for(0, g.N * nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Taps<T>> taps(kBlock * g.K);
    std::vector<T> acc(C);
    const std::vector<T> fill = fill_rows<T>(C);
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t n = task / nblocks, p0 = (task % nblocks) * kBlock,
                    np = std::min(kBlock, g.HW - p0);
      fill_taps(geom + n * g.geom_ch * g.HW, g, p0, np, taps.data());
      const T* xn = xt + n * g.HW * C;
      for (int64_t i = 0; i < np; ++i) {
        for (int64_t c = 0; c < C; ++c) acc[c] = bias ? bias[c] : T(0);
        for (int t = 0; t < g.K; ++t) {
          const Taps<T>& s = taps[i * g.K + t];
          const CornerRows<T> rows(xn, s, C, fill.data());
          const T *r0 = rows.r[0], *r1 = rows.r[1], *r2 = rows.r[2], *r3 = rows.r[3];
          const T* wtt = wt + t * C;
          for (int64_t c = 0; c < C; ++c)
            acc[c] += wtt[c] * (s.w[0] * r0[c] + s.w[1] * r1[c] + s.w[2] * r2[c] + s.w[3] * r3[c]);
        }
        std::copy(acc.begin(), acc.end(), outt + (n * g.HW + p0 + i) * C);
      }
    }
  });
}

// Dense forward over one channels-last slice xt (N, HW, width) of x: per pixel block, the column
// tile (np x K x width) is gathered row by row from the corner rows (SIMD over channels, no branch
// per corner), and out (N, C_out, HW) gets wp (C_out x K*width, the slice's weights with taps
// before channels) times its transpose: written by the first slice, added by the others.
template <typename T>
void dense_cl_forward(const T* xt, const T* geom, const T* wp, T* out, const Geometry& g,
                      int64_t width, bool first) {
  const int64_t nblocks = (g.HW + kBlock - 1) / kBlock, KW = g.K * width;
  at::parallel_for(0, g.N * nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Taps<T>> taps(kBlock * g.K);
    std::vector<T> cols(kBlock * KW), acc(g.Cout * kBlock);
    const std::vector<T> fill = fill_rows<T>(width);
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t n = task / nblocks, p0 = (task % nblocks) * kBlock,
                    np = std::min(kBlock, g.HW - p0);
      fill_taps(geom + n * g.geom_ch * g.HW, g, p0, np, taps.data());
      const T* xn = xt + n * g.HW * width;
      for (int64_t j = 0; j < np * g.K; ++j) {
        const Taps<T>& s = taps[j];
        const CornerRows<T> rows(xn, s, width, fill.data());
        const T *r0 = rows.r[0], *r1 = rows.r[1], *r2 = rows.r[2], *r3 = rows.r[3];
        T* col = cols.data() + j * width;
        for (int64_t c = 0; c < width; ++c)
          col[c] = s.w[0] * r0[c] + s.w[1] * r1[c] + s.w[2] * r2[c] + s.w[3] * r3[c];
      }
      auto res = view(acc.data(), g.Cout, np, np);
      at::mm_out(res, view(const_cast<T*>(wp), g.Cout, KW, KW), view(cols.data(), np, KW, KW).t());
      T* outn = out + n * g.Cout * g.HW + p0;
      for (int64_t o = 0; o < g.Cout; ++o)
        for (int64_t i = 0; i < np; ++i)
          outn[o * g.HW + i] = (first ? T(0) : outn[o * g.HW + i]) + acc[o * np + i];
    }
  });
}

template <typename T>
void depthwise_cl_backward(const T* goutt, const T* xt, const T* geom, const T* wt, T* dxt,
                           T* dgeom, T* dwt, const Geometry& g, bool accumulate_dgeom) {
  const int64_t nblocks = (g.HW + kBlock - 1) / kBlock, C = g.C, wsize = g.K * C;
  const int nthreads = at::get_num_threads();
  std::vector<T> dw_local(static_cast<size_t>(nthreads) * wsize, T(0));
  // Pass 1: geometry and weight gradients, tasks own pixel blocks.
  at::parallel_for(0, g.N * nblocks, 1, [&](int64_t b0, int64_t b1) {
    T* dw = dw_local.data() + at::get_thread_num() * wsize;
    std::vector<Taps<T>> taps(kBlock * g.K);
    std::vector<T> gg(g.geom_ch);
    const std::vector<T> fill = fill_rows<T>(C);
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t n = task / nblocks, p0 = (task % nblocks) * kBlock,
                    np = std::min(kBlock, g.HW - p0);
      fill_taps(geom + n * g.geom_ch * g.HW, g, p0, np, taps.data());
      const T* xn = xt + n * g.HW * C;
      for (int64_t i = 0; i < np; ++i) {
        const T* go = goutt + (n * g.HW + p0 + i) * C;
        std::fill(gg.begin(), gg.end(), T(0));
        for (int t = 0; t < g.K; ++t) {
          const Taps<T>& s = taps[i * g.K + t];
          const CornerRows<T> rows(xn, s, C, fill.data());
          const T *r0 = rows.r[0], *r1 = rows.r[1], *r2 = rows.r[2], *r3 = rows.r[3];
          const T* wtt = wt + t * C;
          T* dwtt = dw + t * C;
          T gpy = s.bad, gpx = s.bad;
          for (int64_t c = 0; c < C; ++c) {
            const T v = s.w[0] * r0[c] + s.w[1] * r1[c] + s.w[2] * r2[c] + s.w[3] * r3[c];
            const T dvy = s.wy[0] * r0[c] + s.wy[1] * r1[c] + s.wy[2] * r2[c] + s.wy[3] * r3[c];
            const T dvx = s.wx[0] * r0[c] + s.wx[1] * r1[c] + s.wx[2] * r2[c] + s.wx[3] * r3[c];
            dwtt[c] += go[c] * v;
            const T gp = go[c] * wtt[c];
            gpy += gp * dvy;
            gpx += gp * dvx;
          }
          accumulate_geom_grad(gg.data(), 1, 0, g.affine, t, static_cast<int>(g.k), gpy, gpx);
        }
        T* dgn = dgeom + n * g.geom_ch * g.HW + p0 + i;
        for (int64_t ch = 0; ch < g.geom_ch; ++ch)
          dgn[ch * g.HW] = (accumulate_dgeom ? dgn[ch * g.HW] : T(0)) + gg[ch];
      }
    }
  });
  std::fill(dwt, dwt + wsize, T(0));
  for (int th = 0; th < nthreads; ++th)
    for (int64_t j = 0; j < wsize; ++j) dwt[j] += dw_local[th * wsize + j];
  // Pass 2: scatter into dx; a task owns a channel slice of one sample.
  const int64_t slices = std::clamp<int64_t>((4 * nthreads + g.N - 1) / g.N, 1, (C + 7) / 8);
  const int64_t cs = (C + slices - 1) / slices;
  at::parallel_for(0, g.N * slices, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Taps<T>> taps(kBlock * g.K);
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t n = task / slices, c0 = (task % slices) * cs, c1 = std::min(C, c0 + cs);
      T* dxn = dxt + n * g.HW * C;
      for (int64_t p0 = 0; p0 < g.HW; p0 += kBlock) {
        const int64_t np = std::min(kBlock, g.HW - p0);
        fill_taps(geom + n * g.geom_ch * g.HW, g, p0, np, taps.data());
        for (int64_t i = 0; i < np; ++i) {
          const T* go = goutt + (n * g.HW + p0 + i) * C;
          for (int t = 0; t < g.K; ++t) {
            const Taps<T>& s = taps[i * g.K + t];
            const T* wtt = wt + t * C;
            for (int cr = 0; cr < 4; ++cr) {
              if (s.idx[cr] < 0) continue;
              T* row = dxn + s.idx[cr] * C;
              const T wc = s.w[cr];
              for (int64_t c = c0; c < c1; ++c) row[c] += wc * go[c] * wtt[c];
            }
          }
        }
      }
    }
  });
}

// Half and bfloat16 run in float32; float32/float64 run natively.
at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// x stored channels-last (and not also contiguous: C > 1 and H*W > 1), as the model's feature maps
// are, for a pure depthwise convolution: depthwise_cl_forward reads it in place with all C channels
// as one slice and writes a channels-last output. No layout copy of x or out, and each pixel's
// sampling geometry is computed once for all its channels (not once per slice).
bool depthwise_channels_last(const at::Tensor& x, const at::Tensor& weight, int64_t groups) {
  return x.dim() == 4 && weight.dim() == 4 && weight.size(1) == 1 && weight.size(0) == groups &&
         x.size(1) == groups && !x.is_contiguous() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& geom_in, bool affine,
                       const at::Tensor& weight_in, const c10::optional<at::Tensor>& bias_in,
                       int64_t groups) {
  const auto ct = compute_type(x_in);
  const bool in_place_cl = depthwise_channels_last(x_in, weight_in, groups);
  auto x = in_place_cl ? x_in.to(ct).contiguous(at::MemoryFormat::ChannelsLast)
                       : x_in.to(ct).contiguous();
  auto geom = geom_in.to(ct).contiguous(), weight = weight_in.to(ct).contiguous();
  at::Tensor bias;
  if (bias_in.has_value()) bias = bias_in->to(ct).contiguous();
  const Geometry g = make_geometry(x, geom, affine, weight, groups);
  if (g.N * g.Cout * g.HW == 0) return at::empty({g.N, g.Cout, g.H, g.W}, x_in.options());
  if (in_place_cl) {
    auto out = new_output({g.N, g.C, g.H, g.W}, x.options(), at::MemoryFormat::ChannelsLast);
    auto wt = weight.reshape({g.C, g.K}).t().contiguous();
    AT_DISPATCH_FLOATING_TYPES(ct, "deform_conv2d_forward_cpu_in_place_cl", [&] {
      depthwise_cl_forward<scalar_t>(
          x.data_ptr<scalar_t>(), geom.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
          bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), g);
    });
    return out.to(x_in.scalar_type());
  }
  if (const int64_t width = channels_last_slice(g, x.element_size())) {
    auto out = new_output({g.N, g.C, g.H, g.W}, x.options());
    const SliceBuffer xbuf(g, width, x.options()), obuf(g, width, x.options());
    for (int64_t c0 = 0; c0 < g.C; c0 += width) {
      const Geometry gs = channel_slice(g, std::min(width, g.C - c0));
      auto xt = xbuf.load(g, x.narrow(1, c0, gs.C)), outt = obuf.view(g, gs.C);
      auto wt = weight.narrow(0, c0, gs.C).reshape({gs.C, g.K}).t().contiguous();
      if (poison_outputs()) outt.fill_(NAN);
      AT_DISPATCH_FLOATING_TYPES(ct, "deform_conv2d_forward_cpu_cl", [&] {
        depthwise_cl_forward<scalar_t>(xt.data_ptr<scalar_t>(), geom.data_ptr<scalar_t>(),
                                       wt.data_ptr<scalar_t>(),
                                       bias.defined() ? bias.data_ptr<scalar_t>() + c0 : nullptr,
                                       outt.data_ptr<scalar_t>(), gs);
      });
      store_planes(outt, out.narrow(1, c0, gs.C));
    }
    return out.to(x_in.scalar_type());
  }
  if (const int64_t width = dense_channels_last_slice(g, x.element_size())) {
    auto out = new_output({g.N, g.Cout, g.H, g.W}, x.options());
    const SliceBuffer xbuf(g, width, x.options());
    for (int64_t c0 = 0; c0 < g.C; c0 += width) {
      const int64_t w = std::min(width, g.C - c0);
      auto xt = xbuf.load(g, x.narrow(1, c0, w));
      auto wp = weight.narrow(1, c0, w).reshape({g.Cout, w, g.K}).transpose(1, 2).contiguous();
      AT_DISPATCH_FLOATING_TYPES(ct, "deform_conv2d_forward_cpu_dense_cl", [&] {
        dense_cl_forward<scalar_t>(xt.data_ptr<scalar_t>(), geom.data_ptr<scalar_t>(),
                                   wp.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g, w,
                                   c0 == 0);
      });
    }
    if (bias.defined()) out.add_(bias.view({1, g.Cout, 1, 1}));
    return out.to(x_in.scalar_type());
  }
  auto out = new_output({g.N, g.Cout, g.H, g.W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "deform_conv2d_forward_cpu", [&] {
    forward_impl<scalar_t>(
        x.data_ptr<scalar_t>(), geom.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
        bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), g);
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& gout_in,
                                                            const at::Tensor& x_in,
                                                            const at::Tensor& geom_in, bool affine,
                                                            const at::Tensor& weight_in,
                                                            int64_t groups) {
  const auto ct = compute_type(x_in);
  auto x = x_in.to(ct).contiguous(), geom = geom_in.to(ct).contiguous(),
       weight = weight_in.to(ct).contiguous();
  auto gout = gout_in.to(ct).contiguous();
  const Geometry g = make_geometry(x, geom, affine, weight, groups);
  TORCH_CHECK(gout.sizes() == at::IntArrayRef({g.N, g.Cout, g.H, g.W}),
              "deform_conv2d: grad_out has the wrong shape");
  if (g.N * g.HW == 0)  // no pixel: empty dx and dgeom, dweight sums nothing
    return {at::empty(x_in.sizes(), x_in.options()), at::empty(geom_in.sizes(), geom_in.options()),
            at::zeros(weight_in.sizes(), weight_in.options())};
  auto dgeom = new_output(geom.sizes(), geom.options());
  if (const int64_t width = channels_last_slice(g, x.element_size())) {
    auto dx = new_output(x.sizes(), x.options());
    auto dweight = new_output(weight.sizes(), weight.options());
    const SliceBuffer xbuf(g, width, x.options()), gbuf(g, width, x.options()),
        dxbuf(g, width, x.options());
    for (int64_t c0 = 0; c0 < g.C; c0 += width) {
      const Geometry gs = channel_slice(g, std::min(width, g.C - c0));
      auto xt = xbuf.load(g, x.narrow(1, c0, gs.C)), goutt = gbuf.load(g, gout.narrow(1, c0, gs.C));
      auto wt = weight.narrow(0, c0, gs.C).reshape({gs.C, g.K}).t().contiguous();
      auto dxt = dxbuf.view(g, gs.C).zero_();
      auto dwt = new_output({g.K, gs.C}, x.options());
      AT_DISPATCH_FLOATING_TYPES(ct, "deform_conv2d_backward_cpu_cl", [&] {
        depthwise_cl_backward<scalar_t>(goutt.data_ptr<scalar_t>(), xt.data_ptr<scalar_t>(),
                                        geom.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                                        dxt.data_ptr<scalar_t>(), dgeom.data_ptr<scalar_t>(),
                                        dwt.data_ptr<scalar_t>(), gs, c0 > 0);
      });
      store_planes(dxt, dx.narrow(1, c0, gs.C));
      dweight.narrow(0, c0, gs.C).copy_(dwt.t().reshape({gs.C, 1, g.k, g.k}));
    }
    return {dx.to(x_in.scalar_type()), dgeom.to(geom_in.scalar_type()),
            dweight.to(weight_in.scalar_type())};
  }
  auto dx = at::zeros_like(x);
  auto dweight = new_output(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "deform_conv2d_backward_cpu", [&] {
    backward_geom_weight<scalar_t>(gout.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                   geom.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                                   dgeom.data_ptr<scalar_t>(), dweight.data_ptr<scalar_t>(), g);
    backward_input<scalar_t>(gout.data_ptr<scalar_t>(), geom.data_ptr<scalar_t>(),
                             weight.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), g);
  });
  return {dx.to(x_in.scalar_type()), dgeom.to(geom_in.scalar_type()),
          dweight.to(weight_in.scalar_type())};
}

}  // namespace
}  // namespace deform
}  // namespace dzsr

TORCH_LIBRARY_IMPL(dzsr_C, CPU, m) {
  m.impl("deform_conv2d_forward", &dzsr::deform::forward_cpu);
  m.impl("deform_conv2d_backward", &dzsr::deform::backward_cpu);
}
