// Sliced-Wasserstein loss: fused CPU forward (projection GEMM, radix sorts, loss and sign scatter)
// and the device-generic backward (GEMMs on the stored int8 signs).
//
// Forward, per (sample n, block of directions) task, the block sized so the projected rows stay a
// few MiB even at L = 65536: P_u = M_blk u_n and P_v = M_blk v_n by GEMM, then each row is
// radix-sorted on order-preserving integer keys: the target side without indices unless v needs
// a gradient, the output side with a 32-bit permutation that lives only in the thread's scratch.
// The pass over the sorted rows accumulates |a - b| (in double) and writes sign(a - b) at the
// element's original position (sliced_wasserstein_math.h). Nothing of size N*C'*L is kept but
// the int8 signs. Scheduling (at::parallel_for) is described at forward_cpu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "common.h"
#include "sliced_wasserstein/sliced_wasserstein_math.h"

namespace dzsr {
namespace sw {
namespace {

// Bytes of projected rows (per side) handled per forward GEMM block: 16 MiB unless the
// environment sets DZSR_SW_BLOCK_BYTES (a tuning knob; the tests use it to force several blocks
// in the forward and several column chunks in the backward).
int64_t block_bytes() {
  const char* env = std::getenv("DZSR_SW_BLOCK_BYTES");
  const int64_t bytes = env != nullptr ? std::atoll(env) : 0;
  return bytes > 0 ? bytes : (int64_t(16) << 20);
}

int64_t direction_block(int64_t num_proj, int64_t length, int64_t elem_size) {
  return std::max<int64_t>(
      1, std::min<int64_t>(num_proj, block_bytes() / std::max<int64_t>(1, length * elem_size)));
}

// LSD radix sort, 8 bits per pass, of keys[0, n) (ping-ponging with spare), carrying the int32
// permutation along when idx is not null. Passes in which every key has the same byte are
// skipped. On return *keys / *idx point at the buffers holding the sorted result. The sort is
// stable: equal keys (ties, -0.0 and +0.0, every NaN) keep their input order.
template <typename K>
void radix_sort(K** keys, K** spare, int32_t** idx, int32_t** idx_spare, int64_t n) {
  if (n == 0) return;
  constexpr int kPasses = sizeof(K);
  std::array<int64_t, kPasses * 256> hist{};
  const K* k0 = *keys;
  for (int64_t i = 0; i < n; ++i) {
    for (int p = 0; p < kPasses; ++p) ++hist[p * 256 + ((k0[i] >> (8 * p)) & 0xFF)];
  }
  for (int p = 0; p < kPasses; ++p) {
    int64_t* h = hist.data() + p * 256;
    const K* src = *keys;
    if (h[(src[0] >> (8 * p)) & 0xFF] == n) continue;
    int64_t offset = 0;
    for (int b = 0; b < 256; ++b) {
      const int64_t count = h[b];
      h[b] = offset;
      offset += count;
    }
    K* dst = *spare;
    if (*idx != nullptr) {
      const int32_t* isrc = *idx;
      int32_t* idst = *idx_spare;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t pos = h[(src[i] >> (8 * p)) & 0xFF]++;
        dst[pos] = src[i];
        idst[pos] = isrc[i];
      }
      std::swap(*idx, *idx_spare);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[h[(src[i] >> (8 * p)) & 0xFF]++] = src[i];
    }
    std::swap(*keys, *spare);
  }
}

// One thread's buffers, allocated up front by the calling thread (allocations inside the
// parallel region would land in per-thread malloc arenas and stay resident): the projected rows
// of a block (only where the thread projects its own blocks) and the radix-sort buffers of a row.
template <typename K>
struct Workspace {
  Workspace(int64_t length, bool with_v_index)
      : ku(length),
        ku2(length),
        kv(length),
        kv2(length),
        iu(length),
        iu2(length),
        iv(with_v_index ? length : 0),
        iv2(with_v_index ? length : 0) {}
  at::Tensor pu, pv;  // (block, L) in the compute dtype
  std::vector<K> ku, ku2, kv, kv2;
  std::vector<int32_t> iu, iu2, iv, iv2;
};

// Sorts the rows [begin, end) of the projected block and writes their |a-b| sums and signs.
template <typename scalar_t, typename K>
void sort_compare_rows(const scalar_t* pu, const scalar_t* pv, int64_t begin, int64_t end,
                       int64_t length, int8_t* sign_u, int8_t* sign_v, double* row_sums,
                       Workspace<K>& s) {
  using Key = RadixKey<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* a = pu + r * length;
    const scalar_t* b = pv + r * length;
    for (int64_t i = 0; i < length; ++i) {
      s.ku[i] = Key::encode(a[i]);
      s.kv[i] = Key::encode(b[i]);
    }
    std::iota(s.iu.begin(), s.iu.end(), 0);
    K *ku = s.ku.data(), *ku2 = s.ku2.data(), *kv = s.kv.data(), *kv2 = s.kv2.data();
    int32_t *iu = s.iu.data(), *iu2 = s.iu2.data(), *iv = nullptr, *iv2 = nullptr;
    if (sign_v != nullptr) {
      std::iota(s.iv.begin(), s.iv.end(), 0);
      iv = s.iv.data();
      iv2 = s.iv2.data();
    }
    radix_sort(&ku, &ku2, &iu, &iu2, length);
    radix_sort(&kv, &kv2, &iv, &iv2, length);
    int8_t* su = sign_u + r * length;
    int8_t* sv = sign_v != nullptr ? sign_v + r * length : nullptr;
    double acc = 0.0;
    for (int64_t i = 0; i < length; ++i) {
      const scalar_t d = Key::decode(ku[i]) - Key::decode(kv[i]);
      acc += std::abs(static_cast<double>(d));
      const int8_t g = Key::sign_of_difference(ku[i], kv[i]);
      su[iu[i]] = g;
      if (sv != nullptr) sv[iv[i]] = static_cast<int8_t>(-g);
    }
    row_sums[r] = acc;
  }
}

// Two schedules of the (sample n, direction block) tasks:
//  - N >= threads: one parallel region over the tasks; each thread projects into its own
//    workspace with single-threaded GEMMs (no barrier per sample; the byte budget is shared);
//  - fewer samples (e.g. one 256x256 map): tasks in sequence, multi-threaded GEMMs into one
//    workspace, then a parallel region over the block's rows; one block is held at a time.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& u_in,
                                                           const at::Tensor& v_in,
                                                           const at::Tensor& proj,
                                                           bool need_v_sign) {
  // Detached: the op is not traced, and autograd's thread-local state does not reach the workers.
  const at::Tensor u = u_in.detach(), v = v_in.detach();
  TORCH_CHECK(u.dim() == 4 && v.sizes() == u.sizes(), "u and v must be (N, C, H, W) of one shape");
  TORCH_CHECK(proj.dim() == 2 && proj.size(1) == u.size(1), "proj must be (C', C)");
  TORCH_CHECK(proj.scalar_type() == at::kFloat || proj.scalar_type() == at::kDouble,
              "proj must be float32 or float64 (the compute dtype)");
  const int64_t n_batch = u.size(0), channels = u.size(1), length = u.size(2) * u.size(3);
  const int64_t num_proj = proj.size(0);
  TORCH_CHECK(length < (int64_t(1) << 31), "H*W must fit a 32-bit index");
  const auto dtype = proj.scalar_type();
  const auto opts = proj.options();
  const at::Tensor m = proj.contiguous();
  at::Tensor sign_u = new_output({n_batch, num_proj, length}, opts.dtype(at::kChar));
  at::Tensor sign_v = need_v_sign ? new_output({n_batch, num_proj, length}, opts.dtype(at::kChar))
                                  : at::empty({0}, opts.dtype(at::kChar));
  at::Tensor row_sums = at::empty({n_batch * num_proj}, opts.dtype(at::kDouble));
  const int64_t threads = at::get_num_threads();
  const bool sample_parallel = n_batch >= threads;
  const int64_t block =
      direction_block(num_proj, length, proj.element_size() * (sample_parallel ? threads : 1));
  const int64_t nblocks = (num_proj + block - 1) / block;
  AT_DISPATCH_FLOATING_TYPES(dtype, "sliced_wasserstein_forward_cpu", [&] {
    using K = typename RadixKey<scalar_t>::Bits;
    std::vector<Workspace<K>> ws;
    ws.reserve(threads);
    for (int64_t t = 0; t < threads; ++t) {
      ws.emplace_back(length, need_v_sign);
      if (t == 0 || sample_parallel) {
        ws.back().pu = at::empty({block, length}, opts);
        ws.back().pv = at::empty({block, length}, opts);
      }
    }
    int8_t* su = sign_u.data_ptr<int8_t>();
    int8_t* sv = need_v_sign ? sign_v.data_ptr<int8_t>() : nullptr;
    double* sums = row_sums.data_ptr<double>();
    // Projects task t's block into workspace w; returns (first row, rows).
    auto project = [&](int64_t t, Workspace<K>& w) {
      const int64_t n = t / nblocks, k0 = (t % nblocks) * block,
                    kb = std::min(block, num_proj - k0);
      const at::Tensor mb = m.narrow(0, k0, kb);
      at::Tensor pu = w.pu.narrow(0, 0, kb), pv = w.pv.narrow(0, 0, kb);
      at::mm_out(pu, mb, u.select(0, n).reshape({channels, length}).to(dtype));
      at::mm_out(pv, mb, v.select(0, n).reshape({channels, length}).to(dtype));
      return std::make_pair(n * num_proj + k0, kb);
    };
    auto compare = [&](Workspace<K>& w, int64_t row0, int64_t begin, int64_t end, Workspace<K>& s) {
      sort_compare_rows<scalar_t, K>(w.pu.data_ptr<scalar_t>(), w.pv.data_ptr<scalar_t>(), begin,
                                     end, length, su + row0 * length,
                                     sv != nullptr ? sv + row0 * length : nullptr, sums + row0, s);
    };
    if (sample_parallel) {
      at::parallel_for(0, n_batch * nblocks, 1, [&](int64_t begin, int64_t end) {
        Workspace<K>& w = ws[at::get_thread_num()];
        for (int64_t t = begin; t < end; ++t) {
          const auto [row0, kb] = project(t, w);
          compare(w, row0, 0, kb, w);
        }
      });
    } else {
      for (int64_t t = 0; t < n_batch * nblocks; ++t) {
        const auto [row0, kb] = project(t, ws[0]);
        at::parallel_for(0, kb, 1, [&](int64_t begin, int64_t end) {
          compare(ws[0], row0, begin, end, ws[at::get_thread_num()]);
        });
      }
    }
  });
  const double count = static_cast<double>(n_batch * num_proj * length);
  at::Tensor loss = (row_sums.sum() / count).to(dtype);
  return {loss, sign_u, sign_v};
}

// du (N, C, L) = proj_scaled^T (C, C') @ sign[n] (C', L) for every n, in proj_scaled's dtype.
// sign is int8 (this loss's signs) or int32 (the local loss's per-pixel sums of signs,
// csrc/local_sliced_wasserstein/).
// Column chunks of the signs are converted to floats (at most block_bytes() / 8, 2 MiB by default,
// per chunk) and multiplied with the full C' inner dimension straight into their slice of du, so
// each gradient element is written once. Plain ATen ops, so the same kernel serves CUDA tensors
// (chunks in sequence); on CPU the (sample, chunk) tasks form one parallel region, each GEMM
// single-threaded.
at::Tensor backward_any(const at::Tensor& sign, const at::Tensor& proj_scaled) {
  TORCH_CHECK(
      sign.dim() == 3 && (sign.scalar_type() == at::kChar || sign.scalar_type() == at::kInt),
      "sign must be int8 or int32 (N, C', L)");
  TORCH_CHECK(proj_scaled.dim() == 2 && proj_scaled.size(0) == sign.size(1),
              "proj_scaled must be (C', C)");
  const int64_t n_batch = sign.size(0), num_proj = sign.size(1), length = sign.size(2);
  const int64_t channels = proj_scaled.size(1);
  at::Tensor du = new_output({n_batch, channels, length}, proj_scaled.options());
  const at::Tensor mt = proj_scaled.detach().t();  // see forward_cpu on detaching
  const int64_t chunk = std::max<int64_t>(
      1,
      std::min<int64_t>(
          length, block_bytes() / 8 / std::max<int64_t>(1, num_proj * proj_scaled.element_size())));
  const int64_t nchunks = (length + chunk - 1) / chunk;
  // One float buffer per thread for a chunk of signs, allocated here (see Workspace).
  const int64_t workers = sign.is_cpu() ? at::get_num_threads() : 1;
  const at::Tensor gbuf = at::empty({workers, num_proj * chunk}, proj_scaled.options());
  auto task = [&](int64_t t, int64_t worker) {
    const int64_t n = t / nchunks, l0 = (t % nchunks) * chunk, lc = std::min(chunk, length - l0);
    at::Tensor g = gbuf.select(0, worker).narrow(0, 0, num_proj * lc).view({num_proj, lc});
    g.copy_(sign.select(0, n).narrow(1, l0, lc));
    at::Tensor out = du.select(0, n).narrow(1, l0, lc);
    at::mm_out(out, mt, g);
  };
  if (sign.is_cpu()) {
    at::parallel_for(0, n_batch * nchunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) task(t, at::get_thread_num());
    });
  } else {
    for (int64_t t = 0; t < n_batch * nchunks; ++t) task(t, 0);
  }
  return du;
}

}  // namespace
}  // namespace sw
}  // namespace dzsr

TORCH_LIBRARY_IMPL(dzsr_C, CPU, m) { m.impl("sliced_wasserstein_forward", &dzsr::sw::forward_cpu); }

TORCH_LIBRARY_IMPL(dzsr_C, CompositeExplicitAutograd, m) {
  m.impl("sliced_wasserstein_backward", &dzsr::sw::backward_any);
}
