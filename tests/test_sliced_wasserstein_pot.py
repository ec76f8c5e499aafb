"""The global sliced-Wasserstein loss against an external oracle, POT's
``ot.sliced_wasserstein_distance`` (skipped where POT is not installed: ``pip install pot``).

Normalisation: POT with p=1 and given unit ``projections`` (C, C') returns, for one point cloud
pair, the mean over directions of the 1-D Wasserstein-1 distance between the projected empirical
measures (uniform weights 1/L): (1/C') sum_k (1/L) sum_i |a_(i) - b_(i)|. Our loss is the mean of
|a_(i) - b_(i)| over (n, k, i) (docs/design.md#sliced-wasserstein), that is the mean over the N
samples of POT's value for each sample's H*W points in R^C.
"""

import pytest
import torch

import dzsr_kernels as dk
from dzsr_kernels.sliced_wasserstein import draw_projections, sliced_wasserstein_loss

ot = pytest.importorskip("ot")


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("shape", [(3, 6, 5, 7), (1, 16, 9, 4), (2, 1, 3, 3)])
def test_mean_over_samples_of_pot_distance(backend, shape):
    n, c, h, w = shape
    u, v = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64) * 2
    proj = draw_projections(c, max(1, c // 2), dtype=torch.float64)
    with dk.use_backend(backend):
        ours = sliced_wasserstein_loss(u, v, proj=proj).item()
    per_sample = [
        float(
            ot.sliced_wasserstein_distance(
                u[i].reshape(c, h * w).t().numpy(),
                v[i].reshape(c, h * w).t().numpy(),
                p=1,
                projections=proj.t().numpy(),
            )
        )
        for i in range(n)
    ]
    assert ours == pytest.approx(sum(per_sample) / n, rel=1e-12, abs=1e-14)
