// Top-1 patch matching on CPU: streaming over reference pixel rows with a running max/argmax.
//
// Inputs are prepared by dzsr_kernels/patch_match/reference.py::prepare and are finite
// (match_prepared zeroes the NaNs of non-finite pixels and applies the non-finite rule afterwards):
// pixel-major normalised maps uq (N,Hq,Wq,C), ur (N,Hr,Wr,C) in float32 and inverse patch norms
// inv_q (N,Hpq,Wpq), inv_r (N,Hpr,Wpr). For query patch q the kernel keeps the best val(r) =
// <P_q,P_r> * inv_r[r] with ties to the smallest flattened r, and returns score = best * inv_q[q]
// and the index, as contiguous (N,Hpq,Wpq) float32 and int64 tensors (empty for N = 0).
//
// Shift decomposition: a p x p patch dot product is the sum over the p² shifts d of per-pixel dot
// products, <P_q,P_r> = sum_d <u_q(q+d), u_r(r+d)>. The query patches go in tiles of T x T (their
// (T+p-1)² pixels packed, the p-1 halo included); the reference in bands (a range of patch rows
// and of at most kBandPixels pixel columns). For a query tile and a band the kernel computes, one
// reference pixel row y at a time, the similarity strip S_y = Uq_tile · (pixels of row y)ᵀ (one
// GEMM over C, the row read in place), keeps the last p strips in a ring and, once the rows of
// patch row ry are there, sums p² shifted strip entries per pair instead of a p²C-long dot product.
// Every reference pixel row is multiplied once per query tile and band (2-D reference tiles of
// T x T patches would redo their p-1 halo rows and columns: (T+p-1)²/T² more GEMM, 1.14x at
// T = 30). Memory: p strips of (T+p-1)² x kBandPixels floats per thread besides the inputs.
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

// Query tile side in patches: (62+2)² = 4096 pixel rows per GEMM, a 1.07x halo on the query side.
// At the whole-image matching size (query and reference maps 171x277x256, AVX2 CPU, two threads)
// T = 46 and 62 took 0.96x and 0.93x the user time of 2-D reference tiles of 30 x 30 patches
// (median of five paired process runs each); 62's strips are 3 x 4096 x 277 floats (13 MiB) per
// thread there.
constexpr int64_t kTile = 62;
// Widest reference band in pixels: a strip of 4096 x 512 floats is 8 MiB, so at most 24 MiB of
// strips per thread (4096 x 256 runs about 10% slower per FLOP on the AVX2 machine).
constexpr int64_t kBandPixels = 512;
// Lowest band (unless the map is lower) when the rows are split for more work items: its p-1 extra
// pixel rows add at most 1/8 to the GEMM for p = 3.
constexpr int64_t kMinBandRows = 16;

struct Tile {
  int64_t y0, x0, h, w;  // first patch row/col and size, in patches
};

// The patch grid hp x wp cut into rows x cols tiles, of equal sizes along each axis (up to one).
std::vector<Tile> grid_tiles(int64_t hp, int64_t wp, int64_t rows, int64_t cols) {
  std::vector<Tile> tiles;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t y0 = r * hp / rows, x0 = c * wp / cols;
      tiles.push_back({y0, x0, (r + 1) * hp / rows - y0, (c + 1) * wp / cols - x0});
    }
  return tiles;
}

// The query patch grid in tiles of at most kTile x kTile patches (equal sizes: no thin remainder
// tile, each tile's GEMM as tall as it can be).
std::vector<Tile> query_tiles(int64_t hp, int64_t wp) {
  return grid_tiles(hp, wp, (hp + kTile - 1) / kTile, (wp + kTile - 1) / kTile);
}

// How many column chunks of at most kBandPixels pixels the wp reference patch columns take.
int64_t band_columns(int64_t wp, int64_t p) {
  const int64_t max_w = std::max<int64_t>(1, kBandPixels - (p - 1));
  return (wp + max_w - 1) / max_w;
}

// The reference patch grid cut into band_columns column chunks times `row_splits` ranges of patch
// rows (at most hp): each band is one work share.
std::vector<Tile> reference_bands(int64_t hp, int64_t wp, int64_t p, int64_t row_splits) {
  return grid_tiles(hp, wp, std::min(hp, row_splits), band_columns(wp, p));
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

constexpr int kLanes = 16;

// One query patch against one row of reference patches: val[b] = gain[b] * (sum of the p² shifted
// strip rows at b), b in [0, len); returns max val. kP > 0 fixes the patch size at compile time
// (the p = 3 the model uses: the nine-row sum is fully unrolled and vectorised); kP = 0 reads p at
// run time.
template <int kP>
float shifted_row_max(const float* const* rows, int64_t p, int64_t len,
                      const float* __restrict__ gain, float* __restrict__ val) {
  const int64_t taps = kP > 0 ? kP * kP : p * p;
  float lane_max[kLanes];
  for (int j = 0; j < kLanes; ++j) lane_max[j] = -std::numeric_limits<float>::infinity();
  int64_t b = 0;
  for (; b + kLanes <= len; b += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      float s = rows[0][b + j];
      for (int64_t k = 1; k < taps; ++k) s += rows[k][b + j];
      const float v = s * gain[b + j];
      val[b + j] = v;
      lane_max[j] = lane_max[j] < v ? v : lane_max[j];
    }
  float m = -std::numeric_limits<float>::infinity();
  for (; b < len; ++b) {
    float s = rows[0][b];
    for (int64_t k = 1; k < taps; ++k) s += rows[k][b];
    val[b] = s * gain[b];
    m = std::max(m, val[b]);
  }
  for (int j = 0; j < kLanes; ++j) m = std::max(m, lane_max[j]);
  return m;
}

// Scans the query tile against reference patch row ry of the band: strips[dy] is the similarity
// strip (Pq x rpw, row-major) of the band's pixel row ry + dy. For each query patch the row's
// maximum and its first column are offered to the running best with their global index.
void scan_row(const float* const* strips, const Tile& qt, const Tile& band, int64_t ry, int64_t p,
              int64_t wpr, const float* inv_r_row, float* val, Best* best) {
  const int64_t qpw = qt.w + p - 1, rpw = band.w + p - 1, len = band.w;
  std::vector<const float*> rows(p * p);
  for (int64_t ly = 0; ly < qt.h; ++ly) {
    for (int64_t lx = 0; lx < qt.w; ++lx) {
      for (int64_t dy = 0; dy < p; ++dy)
        for (int64_t dx = 0; dx < p; ++dx)
          rows[dy * p + dx] = strips[dy] + ((ly + dy) * qpw + lx + dx) * rpw + dx;
      const float m = p == 3 ? shifted_row_max<3>(rows.data(), p, len, inv_r_row, val)
                             : shifted_row_max<0>(rows.data(), p, len, inv_r_row, val);
      Best& bst = best[ly * qt.w + lx];
      if (!(m >= bst.val)) continue;
      int64_t b = 0;
      while (b < len && val[b] != m) ++b;
      if (b < len) bst.offer(m, ry * wpr + band.x0 + b);
    }
  }
}

// The similarity strip Q Rᵀ (Pq x Pr, row-major) of pixel rows Q (Pq,C) and R (Pr,C), in one
// worker thread. Without a `fallback` buffer (the caller's choice where PyTorch has oneDNN and it
// is enabled, torch.backends.mkldnn), as oneDNN's 1x1 convolution of Q viewed as a channels-last
// (1,C,1,Pq) image with R as (Pr,C,1,1) filters: the channels-last output (1,Pr,1,Pq) is the strip
// in memory. Why: MKL's sgemm (at::mm) takes its AVX2 path on AMD CPUs; on the development machine
// (AMD EPYC, AVX-512, one thread) it ran a 1024 x 1024 x 256 product at 87 GFLOP/s, oneDNN at 160
// GFLOP/s (weight reorder and output included). Else at::mm into `fallback` (Pq x Pr floats).
// Returns the strip's tensor.
at::Tensor similarity_strip(const float* q, int64_t Pq, const float* r, int64_t Pr, int64_t C,
                            float* fallback) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor rmat = at::from_blob(const_cast<float*>(r), {Pr, C}, opts);
  if (fallback == nullptr) {
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

// One query tile (packed pixels q, Pq rows) against one band of the reference map ur (Hr,Wr,C):
// the band's pixel rows multiplied one at a time into a ring of p strips, each patch row scanned
// once its p strips are there. fallback: p buffers of Pq x (band.w + p - 1) floats or more for
// similarity_strip's at::mm path, or none for oneDNN's.
void match_band(const float* q, const Tile& qt, const float* ur, int64_t Wr, int64_t C,
                const Tile& band, int64_t p, const float* inv_r, int64_t wpr,
                std::vector<std::vector<float>>& fallback, float* val, Best* best) {
  const int64_t Pq = (qt.h + p - 1) * (qt.w + p - 1), rpw = band.w + p - 1;
  std::vector<at::Tensor> ring(p);
  std::vector<const float*> strips(p);
  for (int64_t y = band.y0; y < band.y0 + band.h + p - 1; ++y) {
    ring[y % p] = similarity_strip(q, Pq, ur + (y * Wr + band.x0) * C, rpw, C,
                                   fallback.empty() ? nullptr : fallback[y % p].data());
    const int64_t ry = y - (p - 1);  // the patch row whose last pixel row is y
    if (ry < band.y0) continue;
    for (int64_t dy = 0; dy < p; ++dy) strips[dy] = ring[(ry + dy) % p].data_ptr<float>();
    scan_row(strips.data(), qt, band, ry, p, wpr, inv_r + ry * wpr + band.x0, val, best);
  }
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
  const std::vector<Tile> qtiles = query_tiles(hpq, wpq);
  const int64_t nq = static_cast<int64_t>(qtiles.size());
  // Work items are (sample, query tile, reference band): the reference rows are split into as many
  // bands as it takes to give the threads enough items (taken from a shared counter), each band at
  // least kMinBandRows patch rows high (its p-1 extra pixel rows are the only repeated GEMM work).
  // Each item keeps its own running best, merged below in band order.
  const int64_t want = 8 * at::get_num_threads();
  const int64_t cols = band_columns(wpr, p);
  const int64_t row_splits = std::clamp<int64_t>((want + N * nq * cols - 1) / (N * nq * cols), 1,
                                                 std::max<int64_t>(1, hpr / kMinBandRows));
  const std::vector<Tile> bands = reference_bands(hpr, wpr, p, row_splits);
  const int64_t splits = static_cast<int64_t>(bands.size());
  const int64_t items = N * nq * splits;
  const int64_t tile_patches = kTile * kTile;
  std::vector<Best> partial(static_cast<size_t>(items * tile_patches));

  const float* uq_p = uq.data_ptr<float>();
  const float* ur_p = ur.data_ptr<float>();
  const float* inv_r_p = inv_r.data_ptr<float>();
  const int64_t max_pix = (kTile + p - 1) * (kTile + p - 1);
  const bool onednn = at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
  int64_t max_band_pixels = 0;
  for (const Tile& b : bands) max_band_pixels = std::max(max_band_pixels, b.w + p - 1);
  std::atomic<int64_t> next_item{0};

  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<float> qbuf(max_pix * C), val(max_band_pixels);
    std::vector<std::vector<float>> fallback(onednn ? 0 : p,
                                             std::vector<float>(max_pix * max_band_pixels));
    for (int64_t item; (item = next_item.fetch_add(1)) < items;) {
      const int64_t n = item / (nq * splits), qi = (item / splits) % nq;
      const Tile& qt = qtiles[qi];
      pack_pixels(uq_p + n * Hq * Wq * C, Wq, C, qt, p, qbuf.data());
      match_band(qbuf.data(), qt, ur_p + n * Hr * Wr * C, Wr, C, bands[item % splits], p,
                 inv_r_p + n * hpr * wpr, wpr, fallback, val.data(),
                 partial.data() + item * tile_patches);
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
