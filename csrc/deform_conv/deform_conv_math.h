// Per-element math of the packed deformable convolution, shared by the CPU and CUDA kernels.
//
// Geometry (see dzsr_kernels/deform_conv/reference.py): tap t = i*k + j of output pixel
// q = (qy, qx) has grid vector g = (i - k/2, j - k/2) and samples the input plane at
//   affine:  p = q + A(q) g + b(q),   geom channels [A0, A1, A2, A3, by, bx]
//   general: p = q + g + (off[2t](q), off[2t+1](q)),   geom channels = 2k^2 offsets
// Sampling rule (reference.py states it in full): a non-finite position samples NaN and has a NaN
// position gradient (Taps::bad, added once per tap to the sample and to the position gradient);
// otherwise bilinear over the four corners, where a corner outside the plane is never read nor
// written (index -1) and every inside corner is read even with weight 0. The position gradient is
// bad + sum over channels of (column gradient) * (derivative of the sample).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DZSR_HD __host__ __device__ __forceinline__
#else
#define DZSR_HD inline
#endif

namespace dzsr {
namespace deform {

// One sampling point: the four corners flattened into the plane, with their bilinear weights and
// the weights' derivatives with respect to the position (py, px). A corner outside the plane has
// index -1 and all-zero weights; `bad` is NaN for a non-finite position (all corners outside) and 0
// otherwise: the initial value of the sample and of the position gradient.
template <typename T>
struct Taps {
  int32_t idx[4];
  T w[4];
  T wy[4];
  T wx[4];
  T bad;
};

template <typename T>
DZSR_HD bool is_finite(T v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

DZSR_HD int tap_gy(int t, int k) { return t / k - k / 2; }
DZSR_HD int tap_gx(int t, int k) { return t % k - k / 2; }

// Absolute sampling position of tap t at pixel (qy, qx); geom points at sample n's geometry,
// channel stride `plane`, and `pix` = qy * W + qx.
template <typename T>
DZSR_HD void tap_position(const T* geom, int64_t plane, int64_t pix, bool affine, int t, int k,
                          int qy, int qx, T& py, T& px) {
  const T gy = static_cast<T>(tap_gy(t, k));
  const T gx = static_cast<T>(tap_gx(t, k));
  if (affine) {
    py = qy + geom[0 * plane + pix] * gy + geom[1 * plane + pix] * gx + geom[4 * plane + pix];
    px = qx + geom[2 * plane + pix] * gy + geom[3 * plane + pix] * gx + geom[5 * plane + pix];
  } else {
    py = qy + gy + geom[(2 * t) * plane + pix];
    px = qx + gx + geom[(2 * t + 1) * plane + pix];
  }
}

// The taps of position (py, px); the finiteness test runs once per pixel and tap. Huge finite
// positions fail the range tests below before any float->int conversion.
template <typename T>
DZSR_HD void bilinear_taps(T py, T px, int H, int W, Taps<T>& s) {
  if (!(is_finite(py) && is_finite(px))) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      s.idx[c] = -1;
      s.w[c] = s.wy[c] = s.wx[c] = T(0);
    }
    s.bad = static_cast<T>(NAN);
    return;
  }
  s.bad = T(0);
  const T y0f = floor(py), x0f = floor(px);
  const T ly = py - y0f, lx = px - x0f, hy = T(1) - ly, hx = T(1) - lx;
  const bool vy[2] = {y0f >= T(0) && y0f <= T(H - 1), y0f >= T(-1) && y0f <= T(H - 2)};
  const bool vx[2] = {x0f >= T(0) && x0f <= T(W - 1), x0f >= T(-1) && x0f <= T(W - 2)};
  const int iy = (vy[0] || vy[1]) ? static_cast<int>(y0f) : 0;
  const int ix = (vx[0] || vx[1]) ? static_cast<int>(x0f) : 0;
  const T wy_[2] = {hy, ly}, wx_[2] = {hx, lx};
  const T dy_[2] = {T(-1), T(1)}, dx_[2] = {T(-1), T(1)};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int a = c >> 1, b = c & 1;
    const bool valid = vy[a] && vx[b];
    s.idx[c] = valid ? (iy + a) * W + (ix + b) : -1;
    s.w[c] = valid ? wy_[a] * wx_[b] : T(0);
    s.wy[c] = valid ? dy_[a] * wx_[b] : T(0);
    s.wx[c] = valid ? wy_[a] * dx_[b] : T(0);
  }
}

// One sample, and its value with the position derivatives (dvy, dvx, without `bad`: callers start
// the position gradient at s.bad) sharing the four corner reads. The plane is stored as S and read
// into the accumulation type T of the taps: S = T for float/double, S = half with T = float on
// CUDA, so half inputs are sampled without a float copy of the input.
template <typename T, typename S>
DZSR_HD T sample(const S* plane, const Taps<T>& s) {
  T v = s.bad;
#pragma unroll
  for (int c = 0; c < 4; ++c)
    if (s.idx[c] >= 0) v += s.w[c] * static_cast<T>(plane[s.idx[c]]);
  return v;
}

template <typename T, typename S>
DZSR_HD void sample_with_grad(const S* plane, const Taps<T>& s, T& v, T& dvy, T& dvx) {
  v = s.bad;
  dvy = T(0);
  dvx = T(0);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    if (s.idx[c] < 0) continue;
    const T p = static_cast<T>(plane[s.idx[c]]);
    v += s.w[c] * p;
    dvy += s.wy[c] * p;
    dvx += s.wx[c] * p;
  }
}

// Add the position gradient (gpy, gpx) of tap t to the geometry gradient of one pixel
// (grad points at sample n's gradient, channel stride `plane`, pixel `pix`). Affine: dA = gp g^T,
// db = gp, summed over taps by the caller's accumulation order; general: the tap's own offset.
template <typename T>
DZSR_HD void accumulate_geom_grad(T* grad, int64_t plane, int64_t pix, bool affine, int t, int k,
                                  T gpy, T gpx) {
  if (affine) {
    const T gy = static_cast<T>(tap_gy(t, k));
    const T gx = static_cast<T>(tap_gx(t, k));
    grad[0 * plane + pix] += gpy * gy;
    grad[1 * plane + pix] += gpy * gx;
    grad[2 * plane + pix] += gpx * gy;
    grad[3 * plane + pix] += gpx * gx;
    grad[4 * plane + pix] += gpy;
    grad[5 * plane + pix] += gpx;
  } else {
    grad[(2 * t) * plane + pix] += gpy;
    grad[(2 * t + 1) * plane + pix] += gpx;
  }
}

}  // namespace deform
}  // namespace dzsr
