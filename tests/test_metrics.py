"""Metrics (dzsr.metrics), folder evaluation (dzsr.evaluate) and offline weight loading."""

import csv
import importlib.util
import math

import numpy as np
import pytest
import torch
import torchvision
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import dzsr.metrics as metrics
from dzsr.data import write_rgb
from dzsr.evaluate import column_header, evaluate_folder, format_table, summarize, write_csv
from dzsr.metrics import (
    LPIPS,
    central_region,
    corner_strips,
    image_metrics,
    lpips_lin_path,
    luma,
    mse,
    psnr,
    psnr_from_mse,
    ssim,
)


@pytest.fixture
def rng():
    return np.random.default_rng(torch.initial_seed())


def noisy_pair(rng, h, w, sigma=0.08):
    gt = rng.random((h, w, 3))
    return np.clip(gt + sigma * rng.standard_normal(gt.shape), 0, 1), gt


# ---------------------------------------------------------------- PSNR / SSIM vs scikit-image


@pytest.mark.parametrize("shape", [(11, 11), (37, 52), (64, 41)])
def test_psnr_and_ssim_match_skimage(rng, shape):
    sr, gt = noisy_pair(rng, *shape)
    assert psnr(sr, gt) == pytest.approx(peak_signal_noise_ratio(gt, sr, data_range=1.0), abs=1e-10)
    for sample_cov in (False, True):
        expected = structural_similarity(
            sr,
            gt,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=sample_cov,
            data_range=1.0,
            channel_axis=-1,
        )
        assert ssim(sr, gt, sample_covariance=sample_cov) == pytest.approx(expected, abs=1e-10)


def test_ssim_row_bands_are_exact(rng, monkeypatch):
    monkeypatch.setattr(metrics, "SSIM_BAND_ROWS", 7)  # many bands, a short last one
    sr, gt = noisy_pair(rng, 61, 45)
    expected = structural_similarity(
        sr, gt, win_size=11, gaussian_weights=True, data_range=1.0, channel_axis=-1
    )
    assert ssim(sr, gt) == pytest.approx(expected, abs=1e-12)


def test_metrics_accept_tensors_non_contiguous_and_uint8(rng):
    sr, gt = noisy_pair(rng, 30, 40)
    expected_ssim, expected_psnr = ssim(sr, gt), psnr(sr, gt)
    sr_t = torch.from_numpy(sr).permute(2, 0, 1)  # non-contiguous CHW view
    assert not sr_t.is_contiguous()
    gt_t = torch.from_numpy(gt.transpose(2, 0, 1).copy()).unsqueeze(0)
    assert ssim(sr_t, gt_t) == pytest.approx(expected_ssim, abs=1e-12)
    assert psnr(sr_t.float(), gt) == pytest.approx(expected_psnr, abs=1e-4)
    sr8, gt8 = np.rint(sr * 255).astype(np.uint8), np.rint(gt * 255).astype(np.uint8)
    expected = structural_similarity(
        sr8, gt8, win_size=11, gaussian_weights=True, data_range=255, channel_axis=-1
    )  # the authors' call (sample covariance)
    assert ssim(sr8, gt8) == pytest.approx(expected, abs=1e-10)


def test_identical_images_and_bad_inputs(rng):
    img = rng.random((20, 20, 3))
    assert psnr(img, img) == math.inf and ssim(img, img) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(img, img[:-1])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr(img[..., :2], img[..., :2])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        ssim(torch.rand(2, 3, 20, 20), torch.rand(2, 3, 20, 20))
    with pytest.raises(TypeError, match="numpy array"):
        psnr([1, 2], img)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(img[:10], img[:10])


# ---------------------------------------------------------------- Corner-Image arithmetic


@pytest.mark.parametrize("h,w,s", [(100, 148, 4), (37, 53, 2), (500, 740, 4), (31, 45, 3)])
def test_corner_strips_tile_the_image_around_the_centre(h, w, s):
    count = np.zeros((h, w), int)
    strips = corner_strips(h, w, s)
    for y0, y1, x0, x1 in strips.values():
        count[y0:y1, x0:x1] += 1
    cy0, cy1, cx0, cx1 = central_region(h, w, s)
    assert (cy1 - cy0, cx1 - cx0) == (h // s, w // s)
    assert cy0 == (h - h // s) // 2 and cx0 == (w - w // s) // 2
    assert (count[cy0:cy1, cx0:cx1] == 0).all()
    count[cy0:cy1, cx0:cx1] = 1
    assert (count == 1).all()  # strips are disjoint and, with the centre, cover every pixel once
    assert strips["left"] == (0, h, 0, cx0) and strips["top"] == (0, cy0, cx0, cx1)


def authors_strips(img, s):
    """The authors' four Corner-Image strips, written out independently of dzsr.metrics: full-height
    columns left and right of the centre, and the middle columns' pieces above and below it."""
    h, w = img.shape[:2]
    top, left = (h - h // s) // 2, (w - w // s) // 2
    mid = slice(left, left + w // s)
    return [img[:, :left], img[:top, mid], img[top + h // s :, mid], img[:, left + w // s :]]


def authors_metrics(sr8, gt8, s, y=False):
    """The authors' formula on uint8 HWC images, computed with skimage: Full and Corner PSNR
    (corner: area-weighted MSE) and SSIM (corner: plain mean of the strips), data range 255; with
    ``y``, on skimage's BT.601 luma in [16, 235]."""

    def prep(img):
        return rgb2ycbcr(img)[..., 0] if y else img.astype(np.float64)

    def ssim255(a, b):
        return structural_similarity(
            a, b, win_size=11, gaussian_weights=True, data_range=255, channel_axis=None if y else -1
        )

    a, b = prep(sr8), prep(gt8)
    parts = list(zip(authors_strips(a, s), authors_strips(b, s)))
    areas = [p.shape[0] * p.shape[1] for p, _ in parts]
    corner_mse = sum(np.mean(((p - q) / 255) ** 2) * n for (p, q), n in zip(parts, areas))
    return {
        "psnr": peak_signal_noise_ratio(b, a, data_range=255),
        "ssim": ssim255(a, b),
        "psnr_corner": -10 * math.log10(corner_mse / sum(areas)),
        "ssim_corner": sum(ssim255(p, q) for p, q in parts) / 4,
    }


@pytest.mark.parametrize("h,w,s", [(61, 83, 2), (97, 131, 4), (123, 77, 4), (55, 91, 2)])
@pytest.mark.parametrize("y", [False, True])
def test_image_metrics_follow_the_authors_protocol(rng, h, w, s, y):
    """Random uint8 images of odd sizes: our default settings equal the authors' evaluation."""
    gt8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    sr8 = np.clip(gt8.astype(int) + rng.integers(-30, 31, gt8.shape), 0, 255).astype(np.uint8)
    out = image_metrics(sr8, gt8, s, y_channel=y)
    expected = authors_metrics(sr8, gt8, s, y)
    suffix = "_y" if y else ""
    assert list(out) == [
        f"psnr{suffix}",
        f"ssim{suffix}",
        f"psnr{suffix}_corner",
        f"ssim{suffix}_corner",
    ]
    for key, value in expected.items():
        ours = out[key.replace("psnr", "psnr" + suffix).replace("ssim", "ssim" + suffix)]
        assert ours == pytest.approx(value, abs=1e-9), key
    area = image_metrics(sr8, gt8, s, corner_weighting="area", y_channel=y)
    assert abs(area[f"ssim{suffix}_corner_area"] - out[f"ssim{suffix}_corner"]) > 1e-7  # it tells


def test_corner_weighting_area_is_the_area_weighted_mean(rng):
    h, w, s = 64, 88, 4
    sr, gt = noisy_pair(rng, h, w)
    cy0, cy1, cx0, cx1 = central_region(h, w, s)
    outside = np.ones((h, w), bool)
    outside[cy0:cy1, cx0:cx1] = False
    plain, area = image_metrics(sr, gt, s), image_metrics(sr, gt, s, corner_weighting="area")
    corner_psnr = psnr_from_mse(np.mean((sr - gt)[outside] ** 2))
    assert plain["psnr_corner"] == pytest.approx(corner_psnr, abs=1e-9)
    assert area["psnr_corner"] == plain["psnr_corner"]
    strips = corner_strips(h, w, s).values()
    areas = [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in strips]
    ssims = [ssim(sr[y0:y1, x0:x1], gt[y0:y1, x0:x1]) for y0, y1, x0, x1 in strips]
    assert area["ssim_corner_area"] == pytest.approx(np.dot(areas, ssims) / sum(areas), abs=1e-12)
    assert plain["ssim_corner"] == pytest.approx(np.mean(ssims), abs=1e-12)
    assert abs(plain["ssim_corner"] - area["ssim_corner_area"]) > 1e-6
    assert plain["psnr"] == pytest.approx(psnr(sr, gt))
    assert plain["ssim"] == pytest.approx(ssim(sr, gt))
    with pytest.raises(ValueError, match="corner_weighting must be one of plain, area, got 'mean'"):
        image_metrics(sr, gt, s, corner_weighting="mean")


def test_luma_is_bt601_like_skimage(rng):
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    y = luma(img)
    assert y.shape == (9, 7, 1) and y.dtype == np.float64
    assert np.allclose(y[..., 0] * 255, rgb2ycbcr(img)[..., 0], rtol=0, atol=1e-10)
    white, black = np.ones((1, 1, 3)), np.zeros((1, 1, 3))
    assert luma(white)[0, 0, 0] * 255 == pytest.approx(235) and luma(black)[0, 0, 0] * 255 == 16


def test_corner_image_ignores_the_centre(rng):
    gt = rng.random((60, 80, 3))
    sr = gt.copy()
    y0, y1, x0, x1 = central_region(60, 80, 4)
    sr[y0:y1, x0:x1] = 0.5
    out = image_metrics(sr, gt, 4)
    assert out["psnr_corner"] == math.inf and out["ssim_corner"] == pytest.approx(1.0)
    assert out["psnr"] < 30 and out["ssim"] < 1
    with pytest.raises(ValueError, match="too small for Corner-Image"):
        image_metrics(gt[:30, :30], gt[:30, :30], 4)


# ---------------------------------------------------------------- LPIPS


def test_lpips_random_weights_zero_for_identical_positive_otherwise():
    model = LPIPS()
    x = torch.rand(2, 3, 48, 64)
    d = model(x, x)
    assert d.shape == (2,) and torch.equal(d, torch.zeros(2))
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    d_xy = model(x, y)
    assert (d_xy > 0).all()
    assert torch.allclose(d_xy, model(y, x), rtol=1e-5, atol=1e-7)  # symmetric
    assert (
        model(x, (x + 0.02 * torch.randn_like(x)).clamp(0, 1)) < d_xy
    ).all()  # grows with distortion
    with pytest.raises(ValueError, match="at least 31x31"):
        model(x[..., :30, :], y[..., :30, :])


def test_lpips_matches_a_direct_computation():
    """Same value as the LPIPS formula written out by hand on torchvision's AlexNet."""
    alex = torchvision.models.alexnet(weights=None).eval()
    lin = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) / c for k, c in enumerate(LPIPS.CHANNELS)
    }
    model = LPIPS().load_weights(alex.state_dict(), lin)
    x, y = torch.rand(2, 3, 40, 52), torch.rand(2, 3, 40, 52)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    expected = 0
    fx, fy = (x * 2 - 1 - shift) / scale, (y * 2 - 1 - shift) / scale
    stage_ends, start = [2, 5, 8, 10, 12], 0
    for k, end in enumerate(stage_ends):
        fx, fy = alex.features[start:end](fx), alex.features[start:end](fy)
        nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        expected = expected + ((nx - ny) ** 2 * lin[f"lin{k}.model.1.weight"]).sum(1).mean(
            dim=(1, 2)
        )
        start = end
    with torch.no_grad():
        assert torch.allclose(model(x, y), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(
    importlib.util.find_spec("lpips") is None, reason="optional `lpips` package not installed"
)
def test_lpips_matches_the_reference_package():
    import lpips

    ref = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    alex = {"features." + k.split(".", 1)[1]: v for k, v in ref.net.state_dict().items()}
    lin = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    model = LPIPS().load_weights(alex, lin)
    x, y = torch.rand(2, 3, 64, 48), torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(
            model(x, y), ref(x * 2 - 1, y * 2 - 1).flatten(), rtol=1e-5, atol=1e-7
        )


def test_image_metrics_with_lpips_on_strips(rng):
    model = LPIPS()
    sr, gt = noisy_pair(rng, 128, 160)
    out = image_metrics(sr, gt, 4, lpips=model)
    area = image_metrics(sr, gt, 4, lpips=model, corner_weighting="area", y_channel=True)
    strips = corner_strips(128, 160, 4).values()
    areas = [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in strips]
    values = [
        metrics.lpips_distance(model, sr[y0:y1, x0:x1], gt[y0:y1, x0:x1])
        for y0, y1, x0, x1 in strips
    ]
    assert out["lpips_corner"] == pytest.approx(np.mean(values), rel=1e-6)
    assert area["lpips_corner_area"] == pytest.approx(np.dot(areas, values) / sum(areas), rel=1e-6)
    assert out["lpips"] == pytest.approx(metrics.lpips_distance(model, sr, gt), rel=1e-6)
    assert out["lpips"] > 0 and area["lpips"] == out["lpips"]  # LPIPS stays on RGB with y_channel
    assert list(area) == [
        "psnr_y",
        "ssim_y",
        "lpips",
        "psnr_y_corner",
        "ssim_y_corner_area",
        "lpips_corner_area",
    ]


# ---------------------------------------------------------------- offline weights


def test_missing_weights_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics, "installed_lpips_dir", lambda: None)
    with pytest.raises(
        FileNotFoundError, match=r"alexnet-owt-7be5be79\.pth not found in .*hub/checkpoints"
    ):
        LPIPS.from_pretrained()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LPIPS.from_pretrained(alexnet_path=str(tmp_path / "nope.pth"))
    with pytest.raises(
        FileNotFoundError, match=r"lin weights not found.*pip install lpips.*lpips_v0\.1_alex\.pth"
    ):
        lpips_lin_path()
    with pytest.raises(FileNotFoundError, match="missing_lin.pth"):
        lpips_lin_path(str(tmp_path / "missing_lin.pth"))


def test_from_pretrained_loads_hub_and_package_files(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    alex = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(alex, hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS.CHANNELS)}
    package = tmp_path / "site" / "lpips"  # a stand-in for the installed `lpips` package
    (package / "weights" / "v0.1").mkdir(parents=True)
    torch.save(lin, package / "weights" / "v0.1" / "alex.pth")
    monkeypatch.setattr(metrics, "installed_lpips_dir", lambda: str(package))
    assert lpips_lin_path() == str(package / "weights" / "v0.1" / "alex.pth")
    model = LPIPS.from_pretrained()
    assert torch.equal(model.net.features[3].weight, alex["features.3.weight"])
    assert torch.equal(model.lins[2].weight, lin["lin2.model.1.weight"])
    with pytest.raises(ValueError, match="unexpected key 'bias'"):
        LPIPS().load_weights(alex, {"bias": torch.zeros(1)})


# ---------------------------------------------------------------- folder evaluation


def test_evaluate_folder_rows_csv_and_table(tmp_path, rng):
    gts = {}
    for name in ("DSC_0001_x4.png", "DSC_0002_x4.png"):
        gt = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
        sr = np.clip(gt.astype(int) + rng.integers(-9, 10, gt.shape), 0, 255).astype(np.uint8)
        write_rgb(tmp_path / "gt" / name, gt)
        write_rgb(tmp_path / "sr" / name, sr)
        gts[name] = (sr, gt)
    rows = evaluate_folder(tmp_path / "sr", tmp_path / "gt", 4)
    assert [r["name"] for r in rows] == sorted(gts)
    for row in rows:
        sr, gt = gts[row["name"]]
        expected = image_metrics(sr.astype(np.float64) / 255, gt.astype(np.float64) / 255, 4)
        assert all(row[k] == pytest.approx(v, abs=1e-9) for k, v in expected.items())
    table = summarize(rows)
    assert table[-1]["name"] == "mean"
    assert table[-1]["psnr"] == pytest.approx((rows[0]["psnr"] + rows[1]["psnr"]) / 2)
    write_csv(table, tmp_path / "out" / "metrics.csv")
    with open(tmp_path / "out" / "metrics.csv") as f:
        read = list(csv.DictReader(f))
    assert [r["name"] for r in read] == [*sorted(gts), "mean"]
    assert float(read[0]["ssim_corner"]) == pytest.approx(rows[0]["ssim_corner"])
    text = format_table(table)
    assert "Corner PSNR" in text and "DSC_0002_x4.png" in text and f"{rows[0]['psnr']:.2f}" in text
    y_rows = evaluate_folder(
        tmp_path / "sr", tmp_path / "gt", 4, corner_weighting="area", y_channel=True
    )
    assert [k for k in y_rows[0] if k != "name"] == [
        "psnr_y",
        "ssim_y",
        "psnr_y_corner",
        "ssim_y_corner_area",
    ]
    header = format_table(summarize(y_rows)).splitlines()[0]
    assert header == (
        "| image | Full PSNR (Y) | Full SSIM (Y) | Corner PSNR (Y) "
        "| Corner SSIM (Y, area-weighted) |"
    )
    assert column_header("lpips_corner") == "Corner LPIPS"


def test_evaluate_folder_errors(tmp_path, rng):
    gt = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    write_rgb(tmp_path / "gt" / "a.png", gt)
    (tmp_path / "sr").mkdir()
    with pytest.raises(FileNotFoundError, match="no SR image for ground truth a.png"):
        evaluate_folder(tmp_path / "sr", tmp_path / "gt", 4)
    write_rgb(tmp_path / "sr" / "a.jpg", gt[:, :80])
    with pytest.raises(ValueError, match="is 64x80 but its ground truth"):
        evaluate_folder(tmp_path / "sr", tmp_path / "gt", 4)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        evaluate_folder(tmp_path / "none", tmp_path / "gt", 4)


def test_mse_helper(rng):
    a, b = noisy_pair(rng, 12, 13)
    assert mse(a, b) == pytest.approx(np.mean((a - b) ** 2))


def test_pretrained_load_state_dict_paths(tmp_path, monkeypatch):
    from dzsr.pretrained import load_state_dict

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    state = {"w": torch.arange(3.0)}
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "a.pth")
    torch.save({"state_dict": state}, tmp_path / "b.pth")
    assert torch.equal(load_state_dict("a.pth")["w"], state["w"])  # hub cache
    assert torch.equal(
        load_state_dict("b.pth", tmp_path / "b.pth")["w"], state["w"]
    )  # file, unwrapped
    assert torch.equal(load_state_dict("b.pth", tmp_path)["w"], state["w"])  # folder holding it
    with pytest.raises(FileNotFoundError, match=r"c\.pth not found in .*hub/checkpoints"):
        load_state_dict("c.pth")
    with pytest.raises(
        FileNotFoundError, match=r"c\.pth not found: .*nowhere/c\.pth does not exist"
    ):
        load_state_dict("c.pth", tmp_path / "nowhere" / "c.pth")
