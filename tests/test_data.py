"""Data preparation, datasets and the training sampler (dzsr.data)."""

import itertools
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dzsr.data import (
    DualZoomDataset,
    ShortTeleFolder,
    TrainPatches,
    camerafusion,
    estimate_flow,
    fit_colour,
    match_colour,
    nikon,
    prepare_folder,
    prepare_pair,
    read_rgb,
    worker_init,
    write_rgb,
)
from dzsr.data.degrade import Degradation, bicubic_down, bilinear_down, degrade, noise_map
from dzsr.data.prepare import smallest_valid_trim, warp_with_flow

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture
def rng():
    return np.random.default_rng(torch.initial_seed())


def smooth_texture(rng, h, w, blur=2.0, lo=0.15, hi=0.85):
    """A random textured RGB image in [lo, hi], float32 HWC."""
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), blur)
    img = (img - img.min()) / (img.max() - img.min())
    return (lo + (hi - lo) * img).astype(np.float32)


def box_down(img, s):
    h, w, c = img.shape
    return np.rint(
        img.reshape(h // s, s, w // s, s, c).astype(np.float64).mean(axis=(1, 3))
    ).astype(np.uint8)


# ---------------------------------------------------------------- colour matching


def test_colour_fit_recovers_luma_affine(rng):
    target = smooth_texture(rng, 37, 53, lo=0.3, hi=0.7)
    a, b = rng.uniform(0.7, 1.3), rng.uniform(-0.08, 0.08)
    y = target @ LUMA
    source = (target + ((y - b) / a - y)[..., None]).astype(np.float32)  # same chroma, luma (y-b)/a
    fit = fit_colour(source, target)
    assert fit.a == pytest.approx(a, abs=1e-5) and fit.b == pytest.approx(b, abs=1e-5)
    assert np.allclose(fit.gains, 1.0, atol=1e-5)
    subset = fit_colour(source, target, max_pixels=97)  # fitted on every k-th pixel only
    assert subset.a == pytest.approx(a, abs=1e-5) and subset.b == pytest.approx(b, abs=1e-5)
    matched, _ = match_colour(source, target)
    assert np.abs(matched - target).max() < 1e-5


def test_colour_fit_ignores_the_worst_pixels(rng):
    target = smooth_texture(rng, 64, 48, lo=0.3, hi=0.7)
    y = target @ LUMA
    source = (target + ((y - 0.02) / 1.2 - y)[..., None]).astype(np.float32)
    outliers = (
        rng.random(target.shape[:2]) < 0.03
    )  # occlusions: 3% of pixels unrelated to the target
    source[outliers] = rng.random((int(outliers.sum()), 3))
    fit = fit_colour(source, target)
    assert fit.a == pytest.approx(1.2, abs=5e-3) and fit.b == pytest.approx(0.02, abs=2e-3)
    single_pass = fit_colour(
        source, target, refits=0
    )  # the authors' ranking by raw luma difference
    assert abs(single_pass.a - 1.2) > 5 * abs(fit.a - 1.2)


def test_colour_fit_restores_channel_balance(rng):
    target = smooth_texture(rng, 64, 48, lo=0.25, hi=0.6)
    source = (0.9 * target * np.array([1.15, 0.95, 0.8]) + 0.03).astype(np.float32)
    matched, _ = match_colour(source, target)
    assert np.abs(matched - target).mean() < 0.3 * np.abs(source - target).mean()
    balance = lambda img: img.mean(axis=(0, 1)) / img.mean()  # noqa: E731
    assert np.abs(balance(matched) - balance(target)).max() < 1e-3
    assert abs(matched.mean() - target.mean()) < 0.02


def test_colour_fit_uses_only_masked_pixels(rng):
    target = smooth_texture(rng, 40, 40, lo=0.3, hi=0.7)
    source = (0.8 * target + 0.05).astype(np.float32)
    mask = np.ones(target.shape[:2], bool)
    mask[:, :10] = False
    source[:, :10] = 0.0  # invalid warp area (zeros) must not bias the fit
    fit = fit_colour(source, target, mask, ignore_fraction=0.0)
    assert fit.a == pytest.approx(1 / 0.8, rel=1e-4) and fit.b == pytest.approx(
        -0.05 / 0.8, abs=1e-4
    )


def test_colour_matching_is_float_no_uint8_wraparound():
    # Tele brighter than LR everywhere: the authors' uint8 |LR_Y - HR_Y| wraps to ~255 and
    # discards the wrong pixels; in float the fit is exact.
    target = np.full((20, 20, 3), 0.2, np.float32)
    target[:, 10:] = 0.4
    source = (target + 0.3).astype(np.float32)
    fit = fit_colour(source, target)
    assert fit.a == pytest.approx(1.0, abs=1e-6) and fit.b == pytest.approx(-0.3, abs=1e-6)


# ---------------------------------------------------------------- flow and warping


def test_dis_flow_finds_a_known_subpixel_shift(rng):
    img = smooth_texture(rng, 96, 128, blur=1.5)
    dy, dx = 1.5, -2.25
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moving = cv2.warpAffine(img, m, (128, 96), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    flow = estimate_flow(img, moving)  # img(p) = moving(p + (dx, dy))
    inner = flow[16:-16, 16:-16]
    assert np.median(inner[..., 0]) == pytest.approx(dx, abs=0.15)
    assert np.median(inner[..., 1]) == pytest.approx(dy, abs=0.15)


def test_warp_with_flow_mask_and_upsampled_flow():
    img = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8, 12, 3) / 300
    flow = np.zeros((4, 6, 2), np.float32)
    flow[..., 0] = 1.0  # 1 LR pixel = 2 HR pixels to the right
    warped, valid = warp_with_flow(img, flow, scale=2)
    assert np.allclose(warped[:, :10], img[:, 2:])
    assert valid[:, :10].all() and not valid[:, 10:].any()
    assert smallest_valid_trim(valid, 2) == 1
    with pytest.raises(ValueError, match="2x the flow size"):
        warp_with_flow(img[:7], flow, scale=2)


def make_shifted_capture(rng, shift_hr=(8, -12), h=48, w=64, s=4, margin=32):
    """A scene, a short-focus image whose centre 1/s crop is the scene at LR, and a tele = scene shifted."""
    big = smooth_texture(rng, s * h + 2 * margin, s * w + 2 * margin, blur=3.0)
    y0, x0 = margin, margin
    scene = big[y0 : y0 + s * h, x0 : x0 + s * w]
    tele = big[
        y0 - shift_hr[0] : y0 - shift_hr[0] + s * h, x0 - shift_hr[1] : x0 - shift_hr[1] + s * w
    ]
    lr = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA)
    short = cv2.copyMakeBorder(
        lr, 3 * h // 2, 3 * h // 2, 3 * w // 2, 3 * w // 2, cv2.BORDER_REFLECT
    )
    return short, tele, scene, lr


def test_prepare_pair_aligns_a_shifted_telephoto(rng):
    s = 4
    short, tele, scene, lr = make_shifted_capture(rng, s=s)
    gain = np.array([1.1, 1.0, 0.9], np.float32)
    out = prepare_pair(short, np.clip(tele * gain, 0, 1), s)
    t = out["trim"]
    assert out["crop_box"] == (72, 120, 96, 160)
    assert np.array_equal(out["lr"], lr[t : 48 - t, t : 64 - t])
    hs, ws = out["lr"].shape[:2]
    assert out["gt"].shape == (s * hs, s * ws, 3) and out["mask"].shape == (s * hs, s * ws)
    assert out["mask"].all() and 1 <= t <= 6  # shift of (2, -3) LR pixels needs a small trim
    truth = scene[s * t : s * t + s * hs, s * t : s * t + s * ws]
    unaligned = tele[s * t : s * t + s * hs, s * t : s * t + s * ws]
    err_aligned, err_before = np.abs(out["gt"] - truth).mean(), np.abs(unaligned - truth).mean()
    assert err_aligned < 0.35 * err_before
    # LR-grid flow (dx, dy) = (-3, 2) in the interior
    assert np.median(out["flow"][8:-8, 8:-8, 0]) == pytest.approx(-3.0, abs=0.2)
    assert np.median(out["flow"][8:-8, 8:-8, 1]) == pytest.approx(2.0, abs=0.2)
    y0, y1, x0, x1 = out["ref_box"]
    assert np.array_equal(out["ref"], out["gt"][s * y0 : s * y1, s * x0 : s * x1])
    assert (y1 - y0, x1 - x0) == (round(hs / s), round(ws / s))
    for key in ("lr", "gt", "ref"):
        assert out[key].dtype == np.float32 and out[key].min() >= 0 and out[key].max() <= 1


def test_prepare_pair_rejects_inconsistent_inputs(rng):
    short, tele, _, _ = make_shifted_capture(rng)
    with pytest.raises(ValueError, match="inconsistent with scale 4"):
        prepare_pair(short, tele[::3, ::3], 4)  # a third of the expected resolution
    with pytest.raises(ValueError, match="aspect"):
        prepare_pair(short, tele.swapaxes(0, 1), 4)
    with pytest.raises(ValueError, match=r"short must have shape \(H, W, 3\)"):
        prepare_pair(short[..., 0], tele, 4)
    with pytest.raises(TypeError, match="tele must be a numpy array"):
        prepare_pair(short, torch.from_numpy(tele), 4)
    with pytest.raises(ValueError, match="too little valid area.*trim of 20 LR pixels"):
        prepare_pair(short, tele, 4, trim=20)
    with pytest.raises(ValueError, match="scale must be a positive int"):
        prepare_pair(short, tele, 2.5)


def test_prepare_pair_rejects_a_flow_leaving_too_little_overlap(rng, monkeypatch):
    import dzsr.data.prepare as prepare

    short, tele, _, _ = make_shifted_capture(rng)
    big_shift = lambda target, moving: np.full((*target.shape[:2], 2), 13.0, np.float32)  # noqa: E731
    monkeypatch.setattr(prepare, "estimate_flow", big_shift)  # 13 LR px: needs a trim > 48 // 4
    with pytest.raises(
        ValueError, match="too little valid area.*trim of 13 LR pixels .* needed; at most 12"
    ):
        prepare_pair(short, tele, 4)


def test_prepare_folder_writes_the_training_layout(tmp_path, rng):
    short, tele, _, _ = make_shifted_capture(rng)
    write_rgb(tmp_path / "raw" / "short" / "P1.png", short)
    write_rgb(tmp_path / "raw" / "tele" / "P1.jpg", tele)
    records = prepare_folder(tmp_path / "raw", tmp_path / "prep", 4, split="train")
    assert [r["name"] for r in records] == ["P1"]
    ds = DualZoomDataset(tmp_path / "prep", "train", 4)
    assert ds.names == ["P1_x4.png"] and tuple(ds[0]["gt"].shape[1:]) == (
        4 * ds.lr_sizes[0][0],
        4 * ds.lr_sizes[0][1],
    )
    raw = ShortTeleFolder(tmp_path / "raw")
    assert len(raw) == 1 and raw[0]["name"] == "P1"
    assert raw[0]["short"].shape == (3, *short.shape[:2]) and raw[0]["tele"].shape == (
        3,
        *tele.shape[:2],
    )
    os.remove(tmp_path / "raw" / "tele" / "P1.jpg")
    with pytest.raises(FileNotFoundError, match="without a partner.*P1"):
        ShortTeleFolder(tmp_path / "raw")


# ---------------------------------------------------------------- datasets


def make_layout(root, split, scale, sizes, rng, hr_tag=None):
    """``{split}_LR/DSC_000i_x1.png`` + ``{split}_HR/DSC_000i_x{scale}.png``, LR = box mean of HR."""
    hr_tag = hr_tag or f"x{scale}"
    for i, (h, w) in enumerate(sizes):
        gt = rng.integers(0, 256, (scale * h, scale * w, 3), dtype=np.uint8)
        write_rgb(os.path.join(root, f"{split}_HR", f"DSC_{i:04d}_{hr_tag}.png"), gt)
        write_rgb(os.path.join(root, f"{split}_LR", f"DSC_{i:04d}_x1.png"), box_down(gt, scale))


def test_nikon_layout_full_images(tmp_path, rng):
    make_layout(tmp_path / "Nikon", "test", 4, [(21, 30), (17, 18)], rng)
    ds = nikon(tmp_path, "test")
    assert len(ds) == 2 and ds.names == ["DSC_0000_x4.png", "DSC_0001_x4.png"]
    item = ds[0]
    assert item["lr"].shape == (3, 21, 30) and item["gt"].shape == (3, 84, 120)
    assert item["lr"].dtype == torch.float32 and 0 <= item["gt"].min() and item["gt"].max() <= 1
    y0, y1, x0, x1 = item["ref_box"].tolist()
    assert (y0, y1, x0, x1) == (
        8,
        13,
        11,
        19,
    )  # round(21/4)=5 rows from 10-2, round(30/4)=8 cols from 15-4
    assert torch.equal(item["ref"], item["gt"][:, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1])
    lazy = nikon(tmp_path / "Nikon", "test", in_memory=False)
    assert torch.equal(lazy[1]["gt"], ds[1]["gt"])


def test_camerafusion_layout(tmp_path, rng):
    make_layout(tmp_path / "CameraFusion", "train", 2, [(20, 26)], rng)
    item = camerafusion(tmp_path, "train")[0]
    assert item["gt"].shape == (3, 40, 52) and item["ref"].shape == (3, 20, 26)


def test_dataset_errors_are_clear(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="test_LR"):
        nikon(tmp_path, "test")
    make_layout(tmp_path, "test", 4, [(10, 12)], rng, hr_tag="x2")  # HR named for the wrong scale
    with pytest.raises(FileNotFoundError, match="HR image missing.*DSC_0000_x4.png"):
        nikon(tmp_path, "test")
    make_layout(tmp_path, "val", 4, [(10, 12)], rng)
    write_rgb(tmp_path / "val_HR" / "DSC_0000_x4.png", np.zeros((40, 44, 3), np.uint8))
    with pytest.raises(ValueError, match=r"40x44, inconsistent with scale 4.*40x48 was expected"):
        nikon(tmp_path, "val")
    make_layout(tmp_path, "bad", 4, [(10, 12)], rng)
    (tmp_path / "bad_LR" / "DSC_0000_x1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image.*DSC_0000_x1.png"):
        nikon(tmp_path, "bad")
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_rgb(tmp_path / "nothing.png")
    (tmp_path / "empty_LR").mkdir()
    (tmp_path / "empty_HR").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        nikon(tmp_path, "empty")


# ---------------------------------------------------------------- training sampler

ORIENTATIONS = list(itertools.product([False, True], repeat=3))


def _orient(img, hflip, vflip, transpose):
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    return img.swapaxes(0, 1) if transpose else img


def _locate(patch, image):
    """(orientation, y, x) of every way ``patch`` (HWC) is a flipped/transposed crop of ``image``."""
    p = patch.shape[0]
    found = []
    for o in ORIENTATIONS:
        for y in range(image.shape[0] - p + 1):
            for x in range(image.shape[1] - p + 1):
                if np.array_equal(_orient(image[y : y + p, x : x + p], *o), patch):
                    found.append((o, y, x))
    return found


def to_u8(t):
    return np.rint(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


@pytest.mark.parametrize("scale", [4, 2])
def test_sampler_patches_flips_and_reference(tmp_path, rng, scale):
    p = 16
    make_layout(tmp_path, "train", scale, [(20, 23)], rng)
    ds = DualZoomDataset(tmp_path, "train", scale)
    lr_full, _ = ds.load_pair(0)
    sampler = TrainPatches(ds, patch_size=p, length=48, seed=int(rng.integers(1 << 30)))
    seen = set()
    for i in range(48):
        item = sampler[i]
        q = p // scale
        assert item["lr"].shape == (3, p, p) and item["gt"].shape == (3, scale * p, scale * p)
        assert item["noise"].shape == (3, p, p) and item["noise"].dtype == torch.float32
        assert item["ref"].shape == (3, scale * q, scale * q) and item["lr_ref"].shape == (3, q, q)
        lr, gt = to_u8(item["lr"]), to_u8(item["gt"])
        assert np.array_equal(box_down(gt, scale), lr)  # GT and LR flipped/transposed together
        y0, y1, x0, x1 = item["ref_box"].tolist()
        assert y1 - y0 == q and x1 - x0 == q and 0 <= y0 and y1 <= p and 0 <= x0 and x1 <= p
        assert torch.equal(item["lr_ref"], item["lr"][:, y0:y1, x0:x1])
        assert torch.equal(
            item["ref"], item["gt"][:, scale * y0 : scale * y1, scale * x0 : scale * x1]
        )
        found = _locate(lr, lr_full)
        assert len(found) == 1
        seen.add(found[0][0])
    assert len(seen) >= 6  # flips and transpose are actually random


def test_sampler_is_deterministic_per_index_and_epoch(tmp_path, rng):
    make_layout(tmp_path, "train", 4, [(13, 14), (14, 13)], rng)
    sampler = TrainPatches(DualZoomDataset(tmp_path, "train", 4), patch_size=12, length=8, seed=3)
    a, b = sampler[5], sampler[5]
    assert all(torch.equal(a[k], b[k]) for k in ("lr", "gt", "noise", "ref", "ref_box"))
    assert a["name"] == "DSC_0001_x4.png" and sampler[4]["name"] == "DSC_0000_x4.png"
    sampler.set_epoch(1)
    c = sampler[5]
    assert not torch.equal(a["noise"], c["noise"])


def test_sampler_in_dataloader_workers_matches_main_process(tmp_path, rng):
    # OpenCV's thread pool is busy in this process first: forked workers must not deadlock on it
    img = smooth_texture(rng, 256, 256)
    estimate_flow(img, img)
    make_layout(tmp_path, "train", 4, [(14, 15)], rng)
    sampler = TrainPatches(DualZoomDataset(tmp_path, "train", 4), patch_size=12, length=8, seed=1)
    main = next(iter(DataLoader(sampler, batch_size=8, num_workers=0)))
    workers = next(
        iter(
            DataLoader(sampler, batch_size=8, num_workers=2, worker_init_fn=worker_init, timeout=60)
        )
    )
    for k in ("lr", "gt", "noise", "ref", "lr_ref", "ref_box"):
        assert torch.equal(main[k], workers[k]), k


def test_sampler_channel_shuffle_permutes_lr_and_gt_together(tmp_path, rng):
    make_layout(tmp_path, "train", 4, [(14, 15)], rng)
    ds = DualZoomDataset(tmp_path, "train", 4)
    plain = TrainPatches(ds, patch_size=12, length=24, seed=5)
    shuffled = TrainPatches(ds, patch_size=12, length=24, seed=5, channel_shuffle=True)
    perms = set()
    for i in range(24):
        a, b = plain[i], shuffled[i]
        lr_a, lr_b, gt_b = to_u8(a["lr"]), to_u8(b["lr"]), to_u8(b["gt"])
        assert np.array_equal(box_down(gt_b, 4), lr_b)  # same permutation on both
        found = [
            p for p in itertools.permutations(range(3)) if np.array_equal(lr_a[..., list(p)], lr_b)
        ]
        assert found, i  # the same crop and flips, channels permuted
        perms.add(found[0])
    assert len(perms) >= 3
    with pytest.raises(TypeError, match="data.channel_shuffle must be true or false"):
        TrainPatches(ds, patch_size=12, channel_shuffle="yes")


def test_sampler_rejects_small_images(tmp_path, rng):
    make_layout(tmp_path, "train", 4, [(10, 30)], rng)
    with pytest.raises(ValueError, match="10x30, smaller than the 12x12 patch"):
        TrainPatches(DualZoomDataset(tmp_path, "train", 4), patch_size=12)


# ---------------------------------------------------------------- noise map


def test_degradation_draws_follow_the_recipe(rng):
    draws = [Degradation.sample(rng) for _ in range(300)]
    assert {d.order for d in draws} == set(itertools.permutations(("down", "noise", "jpeg")))
    assert min(d.sigma for d in draws) == 5 and max(d.sigma for d in draws) == 30
    assert min(d.quality for d in draws) == 60 and max(d.quality for d in draws) == 95


def test_degradation_ranges_are_configurable_and_none_drops_the_step(rng):
    draws = [Degradation.sample(rng, (0, 2), None) for _ in range(100)]
    assert {d.order for d in draws} == set(itertools.permutations(("down", "noise")))
    assert {d.sigma for d in draws} == {0, 1, 2}
    clean = Degradation.sample(rng, None, None)
    assert clean.order == ("down",)
    gt = np.rint(smooth_texture(rng, 48, 40) * 255).astype(np.uint8)
    expected = np.rint(bilinear_down(gt, 4)).astype(np.uint8)
    assert np.array_equal(degrade(gt, 4, clean, rng), expected)


@pytest.mark.parametrize("bad", [[5], [30, 5], [5.0, 30], "5,30", [-1, 3], [True, 3]])
def test_degradation_ranges_are_checked(bad):
    with pytest.raises(ValueError, match="data.noise_sigma must be null or"):
        Degradation.check_ranges(bad, None)
    with pytest.raises(ValueError, match="data.jpeg_quality must be null or"):
        Degradation.check_ranges(None, [0, 90] if bad == [-1, 3] else bad)


def test_sampler_without_noise_and_jpeg_gives_the_downsampler_difference(tmp_path, rng):
    make_layout(tmp_path, "train", 4, [(13, 14)], rng)
    sampler = TrainPatches(
        DualZoomDataset(tmp_path, "train", 4),
        patch_size=12,
        length=4,
        seed=2,
        noise_sigma=None,
        jpeg_quality=None,
    )
    item = sampler[1]
    gt = to_u8(item["gt"])
    bic = bicubic_down(item["gt"], 4)
    down = torch.from_numpy(np.rint(bilinear_down(gt, 4)).transpose(2, 0, 1) / 255.0).float()
    assert torch.allclose(item["noise"] + bic, down, atol=1e-6)


def test_noise_map_of_gaussian_step_has_the_drawn_sigma(rng):
    gt = np.full((192, 192, 3), 128, np.uint8)
    params = Degradation(order=("down", "noise"), sigma=int(rng.integers(5, 31)), quality=95)
    noise = noise_map(gt, 4, rng, params)
    assert noise.shape == (3, 48, 48)
    assert noise.std().item() == pytest.approx(params.sigma / 255, rel=0.12)
    assert abs(noise.mean().item()) < 4 * params.sigma / 255 / np.sqrt(noise.numel())


def test_noise_map_is_degraded_minus_bicubic(rng):
    gt = np.rint(smooth_texture(rng, 96, 80) * 255).astype(np.uint8)
    params = Degradation.sample(rng)
    seed = int(rng.integers(1 << 30))
    noise = noise_map(gt, 4, np.random.default_rng(seed), params)
    degraded = degrade(gt, 4, params, np.random.default_rng(seed))
    assert degraded.shape == (24, 20, 3) and degraded.dtype == np.uint8
    bic = bicubic_down(torch.from_numpy(gt.transpose(2, 0, 1) / 255.0).float(), 4)
    assert torch.allclose(
        noise + bic, torch.from_numpy(degraded.transpose(2, 0, 1) / 255.0).float(), atol=1e-6
    )
    # the full recipe on a smooth image: zero-mean-ish, noise of a few grey levels
    assert abs(noise.mean().item()) < 3 / 255 and 1 / 255 < noise.std().item() < 40 / 255


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bilinear_down_matches_opencv(rng, scale):
    img = rng.integers(0, 256, (6 * scale, 5 * scale, 3), dtype=np.uint8)
    ours = bilinear_down(img, scale)
    theirs = cv2.resize(img.astype(np.float64), (5, 6), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(ours, theirs, atol=1e-9)
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade(img[:-1], scale, Degradation(("down",), 5, 90), rng)


def test_read_rgb_channels_and_depth(tmp_path, rng):
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cv2.imwrite(
        str(tmp_path / "rgba.png"), np.dstack([rgb[..., ::-1], np.full((5, 7), 9, np.uint8)])
    )
    cv2.imwrite(str(tmp_path / "gray.png"), rgb[..., 0])
    deep = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep[..., ::-1])
    assert np.array_equal(read_rgb(tmp_path / "rgba.png"), rgb)
    assert np.array_equal(read_rgb(tmp_path / "gray.png"), np.repeat(rgb[..., :1], 3, axis=2))
    got = read_rgb(tmp_path / "deep.png")
    assert got.dtype == np.uint16 and np.array_equal(got, deep)
