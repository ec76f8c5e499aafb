// Local sliced-Wasserstein (LOSW) loss: the fused CPU forward.
//
// Projection is linear per pixel, so every pixel is projected once, not once per window holding
// it as with an unfold: P_u = M u_n and P_v = M v_n (C', H*W) by batched GEMMs. Then one task per
// (sample n, direction j) row pair: both rows are turned into order-preserving keys once
// (sliced_wasserstein_math.h); for every window the k*k keys are gathered with their pixel index
// packed below them and sorted (insertion sort up to 64 elements, std::sort above); the sorted
// pairs accumulate |a - b| (in double) and add sign(a - b) to count_u at a's pixel and subtract it
// from count_v at b's pixel. No unfolded buffer and no permutation outlive a window: the backward
// only needs, per pixel and direction, the sum of its signs over the windows holding it (int32),
// so it is one GEMM per sample (sliced_wasserstein_backward). A task owns every window of its row
// pair, so overlapping windows write their sums without atomics or races.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"
#include "sliced_wasserstein/sliced_wasserstein_math.h"

namespace dzsr {
namespace losw {
namespace {

using sw::RadixKey;

__extension__ typedef unsigned __int128 uint128;

// A window element as one unsigned integer: its order key in the high half, its pixel index
// (row-major in the map) in the low 32 bits. Integer order is the values' order with ties broken
// by pixel index, that is by the window's row-major (unfold) order: sorting slots is a stable sort
// of the values, and as the slots are distinct every sort gives the same result.
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

// The window layout: size x size windows at stride, rows x cols of them on a height x width map.
struct Windows {
  int64_t height, width, size, stride, rows, cols;
};

// One thread's buffers, allocated up front by the calling thread (allocations inside the parallel
// region would land in per-thread malloc arenas and stay resident): the keys of a row pair and
// the slots of a window pair.
template <typename K>
struct Scratch {
  Scratch(int64_t length, int64_t window_elems)
      : ka(length), kb(length), sa(window_elems), sb(window_elems) {}
  std::vector<K> ka, kb;
  std::vector<typename SlotOf<K>::type> sa, sb;
};

// The slots of the window whose top-left pixel is origin, in row-major order.
template <typename K, typename S>
void gather_window(const K* keys, int64_t origin, const Windows& g, S* slots) {
  constexpr int kShift = 8 * sizeof(K);
  for (int64_t dy = 0; dy < g.size; ++dy) {
    const int64_t row = origin + dy * g.width;
    for (int64_t dx = 0; dx < g.size; ++dx) {
      *slots++ = (S(keys[row + dx]) << kShift) | S(static_cast<uint32_t>(row + dx));
    }
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
    for (int64_t wx = 0; wx < g.cols; ++wx) {
      const int64_t origin = wy * g.stride * g.width + wx * g.stride;
      gather_window(s.ka.data(), origin, g, s.sa.data());
      gather_window(s.kb.data(), origin, g, s.sb.data());
      sort_slots(s.sa.data(), elems);
      sort_slots(s.sb.data(), elems);
      for (int64_t i = 0; i < elems; ++i) {
        const K ka = static_cast<K>(s.sa[i] >> kShift), kb = static_cast<K>(s.sb[i] >> kShift);
        const scalar_t d = Key::decode(ka) - Key::decode(kb);
        acc += std::abs(static_cast<double>(d));
        const int8_t sign = Key::sign_of_difference(ka, kb);
        count_u[static_cast<uint32_t>(s.sa[i])] += sign;
        if (count_v != nullptr) count_v[static_cast<uint32_t>(s.sb[i])] -= sign;
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
  TORCH_CHECK(u.dim() == 4 && v.sizes() == u.sizes(), "u and v must be (N, C, H, W) of one shape");
  TORCH_CHECK(proj.dim() == 2 && proj.size(1) == u.size(1), "proj must be (C', C)");
  TORCH_CHECK(proj.scalar_type() == at::kFloat || proj.scalar_type() == at::kDouble,
              "proj must be float32 or float64 (the compute dtype)");
  TORCH_CHECK(window >= 1 && window <= std::min(u.size(2), u.size(3)) && stride >= 1,
              "window must be in [1, min(H, W)] and stride >= 1");
  const int64_t n_batch = u.size(0), channels = u.size(1), length = u.size(2) * u.size(3);
  const int64_t num_proj = proj.size(0);
  TORCH_CHECK(length < (int64_t(1) << 31), "H*W must fit a 32-bit index");
  const Windows g{u.size(2),
                  u.size(3),
                  window,
                  stride,
                  (u.size(2) - window) / stride + 1,
                  (u.size(3) - window) / stride + 1};
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
    for (int64_t t = 0; t < threads; ++t) scratch.emplace_back(length, window * window);
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
