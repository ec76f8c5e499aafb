// Top-1 patch matching on CPU: streaming over reference tiles with a running max/argmax.
//
// Inputs are prepared by dzsr_kernels/patch_match/reference.py::prepare and are finite
// (match_prepared zeroes the NaNs of non-finite pixels and applies the non-finite rule afterwards):
// pixel-major normalised maps uq (N,Hq,Wq,C), ur (N,Hr,Wr,C) in float32 and inverse patch norms
// inv_q (N,Hpq,Wpq), inv_r (N,Hpr,Wpr). For query patch q the kernel keeps the best val(r) =
// <P_q,P_r> * inv_r[r] with ties to the smallest flattened r, and returns score = best * inv_q[q]
// and the index, as contiguous (N,Hpq,Wpq) float32 and int64 tensors (empty for N = 0).
//
// Shift decomposition: a p x p patch dot product is the sum over the p² shifts d of per-pixel dot
// products, <P_q,P_r> = sum_d <u_q(q+d), u_r(r+d)>. For a tile of query patches and a tile of
// reference patches the kernel computes the per-pixel similarity tile S = Uq_tile · Ur_tileᵀ once
// (one GEMM over C, pixel tiles include the p-1 halo) and sums p² shifted entries of S per pair,
// instead of a p²C-long dot product per pair. Memory: O(tile²) per thread besides the inputs.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace {

// Tile side in patches; a tile of T x T patches spans (T+p-1)² pixels. 30 keeps the similarity
// tile (32² x 32² floats = 4 MiB) small while the halo costs (32/30)² ≈ 1.14x per side in the GEMM.
constexpr int64_t kTile = 30;

struct Tile {
  int64_t y0, x0, h, w;  // first patch row/col and size, in patches
};

std::vector<Tile> make_tiles(int64_t hp, int64_t wp) {
  std::vector<Tile> tiles;
  for (int64_t y = 0; y < hp; y += kTile)
    for (int64_t x = 0; x < wp; x += kTile)
      tiles.push_back({y, x, std::min(kTile, hp - y), std::min(kTile, wp - x)});
  return tiles;
}

// Copies the pixels of tile t (with its p-1 halo) of map u (H,W,C) into dst, rows of C floats.
void pack_pixels(const float* u, int64_t W, int64_t C, const Tile& t, int64_t p, float* dst) {
  const int64_t pw = t.w + p - 1;
  for (int64_t yy = 0; yy < t.h + p - 1; ++yy)
    std::memcpy(dst + yy * pw * C, u + ((t.y0 + yy) * W + t.x0) * C, sizeof(float) * pw * C);
}

// Running best of one query patch; merge keeps the larger value, then the smaller index.
struct Best {
  float val = -std::numeric_limits<float>::infinity();
  int64_t idx = std::numeric_limits<int64_t>::max();
  void offer(float v, int64_t i) {
    if (v > val || (v == val && i < idx)) {
      val = v;
      idx = i;
    }
  }
};

// Per reference tile, the flat layout used by scan_pair: pair (query patch, ref patch (ry, rx))
// sits at b = ry * rpw + rx (rpw = tile pixel width), so the p-1 columns per row with rx >= w are
// invalid. gain[b] = inv_r of the patch (0 if invalid) and bias[b] = 0 (-inf if invalid):
// val = sum * gain + bias.
struct RefTileScale {
  std::vector<float> gain, bias;
  int64_t len = 0;  // (h-1) * rpw + w
  void fill(const float* inv_r, int64_t wpr, const Tile& t, int64_t p) {
    const int64_t rpw = t.w + p - 1;
    len = (t.h - 1) * rpw + t.w;
    gain.assign(len, 0.f);
    bias.assign(len, -std::numeric_limits<float>::infinity());
    for (int64_t y = 0; y < t.h; ++y)
      for (int64_t x = 0; x < t.w; ++x) {
        gain[y * rpw + x] = inv_r[(t.y0 + y) * wpr + t.x0 + x];
        bias[y * rpw + x] = 0.f;
      }
  }
};

constexpr int kLanes = 16;

// One query patch against one reference tile: val[b] = gain[b] * (sum over the shifted S rows)
// + bias[b] for b in [0, len); returns max val. kP > 0 fixes the patch size at compile time (the
// p = 3 the model uses: the nine-row sum is fully unrolled and vectorised); kP = 0 reads p at run
// time.
template <int kP>
float shifted_row_max(const float* const* rows, int64_t p, int64_t len,
                      const float* __restrict__ gain, const float* __restrict__ bias,
                      float* __restrict__ val) {
  const int64_t taps = kP > 0 ? kP * kP : p * p;
  float lane_max[kLanes];
  for (int j = 0; j < kLanes; ++j) lane_max[j] = -std::numeric_limits<float>::infinity();
  int64_t b = 0;
  for (; b + kLanes <= len; b += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      float s = rows[0][b + j];
      for (int64_t k = 1; k < taps; ++k) s += rows[k][b + j];
      const float v = s * gain[b + j] + bias[b + j];
      val[b + j] = v;
      lane_max[j] = lane_max[j] < v ? v : lane_max[j];
    }
  float m = -std::numeric_limits<float>::infinity();
  for (; b < len; ++b) {
    float s = rows[0][b];
    for (int64_t k = 1; k < taps; ++k) s += rows[k][b];
    val[b] = s * gain[b] + bias[b];
    m = std::max(m, val[b]);
  }
  for (int j = 0; j < kLanes; ++j) m = std::max(m, lane_max[j]);
  return m;
}

// Scans one (query tile, reference tile) pair given their similarity tile S (Pq x Pr): for each
// query patch, val[b] = gain[b] * sum_d S[pixel(q)+d][b + shift(d)] + bias[b] over the flat layout,
// the maximum, and the first b reaching it, offered to the running best with its global index.
void scan_pair(const float* S, int64_t Pr, const Tile& qt, const Tile& rt, int64_t p, int64_t wpr,
               const RefTileScale& scale, float* val, Best* best) {
  const int64_t qpw = qt.w + p - 1, rpw = rt.w + p - 1, len = scale.len;
  std::vector<const float*> rows(p * p);
  for (int64_t ly = 0; ly < qt.h; ++ly) {
    for (int64_t lx = 0; lx < qt.w; ++lx) {
      for (int64_t dy = 0; dy < p; ++dy)
        for (int64_t dx = 0; dx < p; ++dx)
          rows[dy * p + dx] = S + ((ly + dy) * qpw + lx + dx) * Pr + dy * rpw + dx;
      const float m =
          p == 3
              ? shifted_row_max<3>(rows.data(), p, len, scale.gain.data(), scale.bias.data(), val)
              : shifted_row_max<0>(rows.data(), p, len, scale.gain.data(), scale.bias.data(), val);
      Best& bst = best[ly * qt.w + lx];
      if (!(m >= bst.val)) continue;
      int64_t b = 0;
      while (b < len && val[b] != m) ++b;
      if (b < len) bst.offer(m, (rt.y0 + b / rpw) * wpr + rt.x0 + b % rpw);
    }
  }
}

// The similarity tile S = Q Rᵀ (Pq x Pr, row-major) of pixel rows Q (Pq,C) and R (Pr,C), in one
// worker thread. Where PyTorch has oneDNN and it is enabled (torch.backends.mkldnn), as its 1x1
// convolution of Q viewed as a channels-last
// (1,C,1,Pq) image with R as (Pr,C,1,1) filters: the channels-last output (1,Pr,1,Pq) is S in
// memory. Why: MKL's sgemm (at::mm) takes its AVX2 path on AMD CPUs; on the development machine
// (AMD EPYC, AVX-512, one thread) it ran this tile at 87 GFLOP/s, oneDNN at 160 GFLOP/s (weight
// reorder and output included). Elsewhere at::mm into `fallback`. Returns the tile's tensor.
at::Tensor similarity_tile(const float* q, int64_t Pq, const float* r, int64_t Pr, int64_t C,
                           float* fallback) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor rmat = at::from_blob(const_cast<float*>(r), {Pr, C}, opts);
  if (at::hasMKLDNN() && at::globalContext().userEnabledMkldnn()) {
    const at::Tensor image =
        at::from_blob(const_cast<float*>(q), {1, C, 1, Pq}, {Pq * C, 1, Pq * C, C}, opts);
    at::Tensor s = at::mkldnn_convolution(image, rmat.view({Pr, C, 1, 1}), std::nullopt, {0, 0},
                                          {1, 1}, {1, 1}, 1);
    TORCH_INTERNAL_ASSERT(s.is_contiguous(at::MemoryFormat::ChannelsLast));
    return s;
  }
  at::Tensor s = at::from_blob(fallback, {Pq, Pr}, opts);
  at::mm_out(s, at::from_blob(const_cast<float*>(q), {Pq, C}, opts), rmat.t());
  return s;
}

std::tuple<at::Tensor, at::Tensor> patch_match_cpu(const at::Tensor& uq, const at::Tensor& ur,
                                                   const at::Tensor& inv_q, const at::Tensor& inv_r,
                                                   int64_t p) {
  TORCH_CHECK(
      uq.dim() == 4 && ur.dim() == 4 && uq.size(0) == ur.size(0) && uq.size(3) == ur.size(3),
      "patch_match: uq (N,Hq,Wq,C) and ur (N,Hr,Wr,C) must agree in N and C");
  for (const auto* t : {&uq, &ur, &inv_q, &inv_r})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(),
                "patch_match: inputs must be contiguous float32");
  const int64_t N = uq.size(0), Hq = uq.size(1), Wq = uq.size(2), C = uq.size(3);
  const int64_t Hr = ur.size(1), Wr = ur.size(2);
  const int64_t hpq = Hq - p + 1, wpq = Wq - p + 1, hpr = Hr - p + 1, wpr = Wr - p + 1;
  TORCH_CHECK(p >= 1 && hpq >= 1 && wpq >= 1 && hpr >= 1 && wpr >= 1,
              "patch_match: maps smaller than the patch");
  TORCH_CHECK(inv_q.sizes() == at::IntArrayRef({N, hpq, wpq}) &&
                  inv_r.sizes() == at::IntArrayRef({N, hpr, wpr}),
              "patch_match: inv_q/inv_r must be (N, H-p+1, W-p+1)");

  at::Tensor score = dzsr::new_output({N, hpq, wpq}, uq.options());
  at::Tensor index = dzsr::new_output({N, hpq, wpq}, uq.options().dtype(at::kLong));
  if (N == 0) return {score, index};  // empty batch: nothing to match (and no work items to split)
  const std::vector<Tile> qtiles = make_tiles(hpq, wpq), rtiles = make_tiles(hpr, wpr);
  const int64_t nq = static_cast<int64_t>(qtiles.size()), nr = static_cast<int64_t>(rtiles.size());
  // Work items are (sample, query tile, range of reference tiles): the reference tiles are split
  // into `splits` ranges so that there are enough items to balance the threads, which take items
  // from a shared counter. Each item keeps its own running best, merged below in split order.
  const int64_t want = 8 * at::get_num_threads();
  const int64_t splits = std::min(nr, std::max<int64_t>(1, (want + N * nq - 1) / (N * nq)));
  const int64_t items = N * nq * splits;
  const int64_t tile_patches = kTile * kTile;
  std::vector<Best> partial(static_cast<size_t>(items * tile_patches));

  const float* uq_p = uq.data_ptr<float>();
  const float* ur_p = ur.data_ptr<float>();
  const float* inv_r_p = inv_r.data_ptr<float>();
  const int64_t max_pix = (kTile + p - 1) * (kTile + p - 1);
  std::atomic<int64_t> next_item{0};

  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<float> qbuf(max_pix * C), rbuf(max_pix * C), sbuf(max_pix * max_pix), val(max_pix);
    RefTileScale scale;
    for (int64_t item; (item = next_item.fetch_add(1)) < items;) {
      const int64_t n = item / (nq * splits), qi = (item / splits) % nq, sp = item % splits;
      const Tile& qt = qtiles[qi];
      const int64_t Pq = (qt.h + p - 1) * (qt.w + p - 1);
      pack_pixels(uq_p + n * Hq * Wq * C, Wq, C, qt, p, qbuf.data());
      Best* best = partial.data() + item * tile_patches;
      for (int64_t ri = sp * nr / splits; ri < (sp + 1) * nr / splits; ++ri) {
        const Tile& rt = rtiles[ri];
        const int64_t Pr = (rt.h + p - 1) * (rt.w + p - 1);
        pack_pixels(ur_p + n * Hr * Wr * C, Wr, C, rt, p, rbuf.data());
        scale.fill(inv_r_p + n * hpr * wpr, wpr, rt, p);
        const at::Tensor smat = similarity_tile(qbuf.data(), Pq, rbuf.data(), Pr, C, sbuf.data());
        scan_pair(smat.data_ptr<float>(), Pr, qt, rt, p, wpr, scale, val.data(), best);
      }
    }
  });

  float* score_p = score.data_ptr<float>();
  int64_t* index_p = index.data_ptr<int64_t>();
  const float* inv_q_p = inv_q.data_ptr<float>();
  at::parallel_for(0, N * nq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nq;
      const Tile& qt = qtiles[t % nq];
      for (int64_t k = 0; k < qt.h * qt.w; ++k) {
        Best b;
        for (int64_t sp = 0; sp < splits; ++sp) {
          const Best& o = partial[(t * splits + sp) * tile_patches + k];
          b.offer(o.val, o.idx);
        }
        const int64_t o = (n * hpq + qt.y0 + k / qt.w) * wpq + qt.x0 + k % qt.w;
        score_p[o] = b.val * inv_q_p[o];
        index_p[o] = b.idx;
      }
    }
  });
  return {score, index};
}

}  // namespace

TORCH_LIBRARY_IMPL(dzsr_C, CPU, m) { m.impl("patch_match", &patch_match_cpu); }
