// Local sliced-Wasserstein (LOSW) loss: the fused CPU forward.
//
// Projection is linear per pixel, so every pixel is projected once, not once per window holding
// it as with an unfold: P_u = M u_n and P_v = M v_n (C', H*W) by batched GEMMs. Then one task per
// (sample n, direction j) row pair: both rows are turned into order-preserving keys once
// (sliced_wasserstein_math.h). Every window is a union of column strips (gcd(k, s) columns by k
// rows) shared by the k / s windows of its row that overlap it: per row of windows each strip's
// keys are gathered with their pixel index packed below them and sorted once (insertion sort up
// to 64 elements, std::sort above), and each window's sorted k*k values are merged from its
// k / gcd(k, s) strips. The sorted pairs accumulate |a - b| (in double) and add sign(a - b) to
// count_u at a's pixel and subtract it from count_v at b's pixel. No unfolded buffer and no
// permutation outlive a window: the backward only needs, per pixel and direction, the sum of its
// signs over the windows holding it (int32), so it is one GEMM per sample
// (sliced_wasserstein_backward). A task owns every window of its row pair, so overlapping windows
// write their sums without atomics or races.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "common.h"
#include "local_sliced_wasserstein/local_sliced_wasserstein_checks.h"
#include "sliced_wasserstein/sliced_wasserstein_math.h"

namespace dzsr {
namespace losw {
namespace {

using sw::RadixKey;

__extension__ typedef unsigned __int128 uint128;

// A window element (make_slot) as one unsigned integer: its order key in the high half, its pixel
// index (row-major in the map) in the low 32 bits. Integer order is the values' order with ties
// broken by pixel index, that is by the window's row-major (unfold) order: sorting slots is a
// stable sort of the values, and as the slots are distinct every sort gives the same result.
template <typename K>
struct SlotOf;
template <>
struct SlotOf<uint32_t> {
  using type = uint64_t;
};
template <>
struct SlotOf<uint64_t> {
  using type = uint128;
};

template <typename S, typename K>
S make_slot(K key, int64_t pixel) {
  return (S(key) << (8 * sizeof(K))) | S(static_cast<uint32_t>(pixel));
}

template <typename S>
void sort_slots(S* x, int64_t n) {
  if (n > 64) {
    std::sort(x, x + n);
    return;
  }
  for (int64_t i = 1; i < n; ++i) {
    const S value = x[i];
    int64_t j = i;
    for (; j > 0 && x[j - 1] > value; --j) x[j] = x[j - 1];
    x[j] = value;
  }
}

// Merges the sorted ranges [a, a_end) and [b, b_end) into out, branch-free in the common part.
template <typename S>
void merge_two(const S* a, const S* a_end, const S* b, const S* b_end, S* out) {
  while (a != a_end && b != b_end) {
    const bool take_b = *b < *a;
    *out++ = take_b ? *b : *a;
    a += !take_b;
    b += take_b;
  }
  out = std::copy(a, a_end, out);
  std::copy(b, b_end, out);
}

// Sorts runs consecutive sorted runs of run slots each, starting at src (left untouched), by
// rounds of pairwise merges ping-ponging between buf and spare; returns where the result is.
template <typename S>
const S* merge_runs(const S* src, S* buf, S* spare, int64_t run, int64_t runs) {
  const int64_t n = run * runs;
  const S* in = src;
  S* out = buf;
  for (int64_t width = run; width < n; width *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * width) {
      const int64_t mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
      merge_two(in + lo, in + mid, in + mid, in + hi, out + lo);
    }
    in = out;
    out = out == buf ? spare : buf;
  }
  return in;
}

// The window layout: size x size windows at stride, rows x cols of them on a height x width map.
// Every window is the union of size / strip column strips (strip = gcd(size, stride) columns,
// size rows) that start at multiples of strip, so within a row of windows each strip is sorted
// once and merged into the size / stride windows that share it.
struct Windows {
  int64_t height, width, size, stride, rows, cols, strip;
  int64_t strip_elems() const { return size * strip; }
  int64_t strips_per_window() const { return size / strip; }
  int64_t strips_per_row() const { return ((cols - 1) * stride + size) / strip; }
};

// One thread's buffers, allocated up front by the calling thread (allocations inside the parallel
// region would land in per-thread malloc arenas and stay resident): the keys of a row pair, the
// sorted strips of a row of windows and the merge buffers of a window, for u (a) and v (b).
template <typename K>
struct Scratch {
  using S = typename SlotOf<K>::type;
  explicit Scratch(const Windows& g)
      : ka(g.height * g.width),
        kb(g.height * g.width),
        sa(g.strips_per_row() * g.strip_elems()),
        sb(g.strips_per_row() * g.strip_elems()),
        ma(g.size * g.size),
        ma2(g.size * g.size),
        mb(g.size * g.size),
        mb2(g.size * g.size) {}
  std::vector<K> ka, kb;
  std::vector<S> sa, sb, ma, ma2, mb, mb2;
};

// Sorts every strip of the row of windows whose top row is top (keys of one map row pair side).
template <typename K, typename S>
void sort_strips(const K* keys, int64_t top, const Windows& g, S* strips) {
  const int64_t elems = g.strip_elems();
  for (int64_t t = 0; t < g.strips_per_row(); ++t) {
    S* out = strips + t * elems;
    for (int64_t dy = 0; dy < g.size; ++dy) {
      const int64_t first = (top + dy) * g.width + t * g.strip;
      for (int64_t dx = 0; dx < g.strip; ++dx) {
        out[dy * g.strip + dx] = make_slot<S>(keys[first + dx], first + dx);
      }
    }
    sort_slots(out, elems);
  }
}

// Every window of the row pair a = (M u_n)[j], b = (M v_n)[j] (H*W values each): writes the
// row's sign sums count_u and count_v (when not null) and returns the sum of |a_(i) - b_(i)| over
// windows and slots.
template <typename scalar_t, typename K>
double compare_row(const scalar_t* a, const scalar_t* b, const Windows& g, int32_t* count_u,
                   int32_t* count_v, Scratch<K>& s) {
  using Key = RadixKey<scalar_t>;
  constexpr int kShift = 8 * sizeof(K);
  const int64_t length = g.height * g.width, elems = g.size * g.size;
  for (int64_t l = 0; l < length; ++l) {
    s.ka[l] = Key::encode(a[l]);
    s.kb[l] = Key::encode(b[l]);
  }
  std::fill(count_u, count_u + length, 0);
  if (count_v != nullptr) std::fill(count_v, count_v + length, 0);
  double acc = 0.0;
  for (int64_t wy = 0; wy < g.rows; ++wy) {
    sort_strips(s.ka.data(), wy * g.stride, g, s.sa.data());
    sort_strips(s.kb.data(), wy * g.stride, g, s.sb.data());
    for (int64_t wx = 0; wx < g.cols; ++wx) {
      const int64_t first = wx * g.stride / g.strip * g.strip_elems();
      const auto* sa = merge_runs(s.sa.data() + first, s.ma.data(), s.ma2.data(), g.strip_elems(),
                                  g.strips_per_window());
      const auto* sb = merge_runs(s.sb.data() + first, s.mb.data(), s.mb2.data(), g.strip_elems(),
                                  g.strips_per_window());
      for (int64_t i = 0; i < elems; ++i) {
        const K ka = static_cast<K>(sa[i] >> kShift), kb = static_cast<K>(sb[i] >> kShift);
        const scalar_t d = Key::decode(ka) - Key::decode(kb);
        acc += std::abs(static_cast<double>(d));
        const int8_t sign = Key::sign_of_difference(ka, kb);
        count_u[static_cast<uint32_t>(sa[i])] += sign;
        if (count_v != nullptr) count_v[static_cast<uint32_t>(sb[i])] -= sign;
      }
    }
  }
  return acc;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& u_in,
                                                           const at::Tensor& v_in,
                                                           const at::Tensor& proj, int64_t window,
                                                           int64_t stride, bool need_v_count) {
  // Detached: the op is not traced, and autograd's thread-local state does not reach the workers.
  const at::Tensor u = u_in.detach(), v = v_in.detach();
  check_forward_arguments(u, v, proj, window, stride);
  const int64_t n_batch = u.size(0), channels = u.size(1), length = u.size(2) * u.size(3);
  const int64_t num_proj = proj.size(0);
  const Windows g{u.size(2),
                  u.size(3),
                  window,
                  stride,
                  (u.size(2) - window) / stride + 1,
                  (u.size(3) - window) / stride + 1,
                  std::gcd(window, stride)};
  const auto dtype = proj.scalar_type();
  const auto count_opts = proj.options().dtype(at::kInt);
  at::Tensor count_u = new_output({n_batch, num_proj, length}, count_opts);
  at::Tensor count_v = need_v_count ? new_output({n_batch, num_proj, length}, count_opts)
                                    : at::empty({0}, count_opts);
  at::Tensor row_sums = at::empty({n_batch * num_proj}, proj.options().dtype(at::kDouble));
  const at::Tensor m = proj.contiguous();
  const at::Tensor pu =
      at::matmul(m, u.reshape({n_batch, channels, length}).to(dtype)).contiguous();
  const at::Tensor pv =
      at::matmul(m, v.reshape({n_batch, channels, length}).to(dtype)).contiguous();
  const int64_t threads = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES(dtype, "local_sliced_wasserstein_forward_cpu", [&] {
    using K = typename RadixKey<scalar_t>::Bits;
    std::vector<Scratch<K>> scratch;
    scratch.reserve(threads);
    for (int64_t t = 0; t < threads; ++t) scratch.emplace_back(g);
    const scalar_t* a = pu.data_ptr<scalar_t>();
    const scalar_t* b = pv.data_ptr<scalar_t>();
    int32_t* cu = count_u.data_ptr<int32_t>();
    int32_t* cv = need_v_count ? count_v.data_ptr<int32_t>() : nullptr;
    double* sums = row_sums.data_ptr<double>();
    at::parallel_for(0, n_batch * num_proj, 1, [&](int64_t begin, int64_t end) {
      Scratch<K>& s = scratch[at::get_thread_num()];
      for (int64_t r = begin; r < end; ++r) {
        const int64_t at_row = r * length;
        sums[r] = compare_row<scalar_t, K>(a + at_row, b + at_row, g, cu + at_row,
                                           cv != nullptr ? cv + at_row : nullptr, s);
      }
    });
  });
  const double pairs = static_cast<double>(n_batch * num_proj) *
                       static_cast<double>(g.rows * g.cols * window * window);
  at::Tensor loss = (row_sums.sum() / pairs).to(dtype);
  return {loss, count_u, count_v};
}

}  // namespace
}  // namespace losw
}  // namespace dzsr

TORCH_LIBRARY_IMPL(dzsr_C, CPU, m) {
  m.impl("local_sliced_wasserstein_forward", &dzsr::losw::forward_cpu);
}
