"""Image preparation: golden bit-exactness per size bucket, person masks vs the golden e2e
runs, input conversions and validation messages."""

from __future__ import annotations

import io as stdio

import numpy as np
import pytest
import torch
from PIL import Image

from mtlib import buckets, trace
from mtlib.io import InputError
from mtlib.media import image
from tests import versions
from tests.golden import get_case, golden_cases

SIZES = ("multitalk-480", "multitalk-720")


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("image"), ids=str)
def test_golden_image(golden, case_name):
    case = get_case(golden, case_name)
    src = case.file(case.params["source"]["file"])
    checked = 0
    for size in SIZES:
        p = case.params.get(size)
        if p is None:
            continue
        table = (
            buckets.table_from_json(golden.tiny_configs["buckets_tiny"][size])
            if p["tiny_table"]
            else "official"
        )
        rec = trace.MemoryRecorder(["image.*"])
        with trace.recording(rec):
            prepared = image.prepare_image(src, size, table)
        g = prepared.geometry
        assert (g.src_h, g.src_w) == (p["src_h"], p["src_w"])
        assert prepared.bucket == p["closest_bucket"]
        assert prepared.target_hw == (p["target_h"], p["target_w"])
        assert [[g.resized_w, g.resized_h]] == [r["size_wh"] for r in p["pil_resize"]]
        assert all(r["resample"] == Image.BILINEAR for r in p["pil_resize"])
        golden_u8 = np.asarray(Image.open(case.file(p["cond_u8_png"])).convert("RGB"))
        # bitwise equal, except for Pillow >= 13's documented +-1 (tests/versions.py)
        exact = versions.assert_crop_equal(prepared.crop_u8, golden_u8, f"{case_name}:{size}")
        assert list(prepared.cond.shape) == p["cond_shape"] and prepared.cond.dtype == torch.float32
        tag = size.rsplit("-", 1)[-1]
        name = f"image.b{tag}.cond"
        if exact:
            assert prepared.cond_sha256 == p["cond_sha256_float32"]
        if name in case.tensor_index:  # tiny cases store the tensor too: bitwise equal
            if exact:
                assert torch.equal(rec[name], case[name])
            else:  # one u8 level is 2/255 in [-1, 1]
                assert (rec[name] - case[name]).abs().max() <= 2 / 255 + 1e-6
        checked += 1
    assert checked >= 1


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_ref_target_masks(golden, case_name):
    case = get_case(golden, case_name)
    refs = case.params["input_refs"]
    src = get_case(golden, refs["image_case"]).params["source"]
    clip0 = case.params["clips"][0]
    num_persons = case.tensor_index["e2e.clip0.audio"]["shape"][0]
    assert num_persons == clip0["HUMAN_NUMBER"]
    masks = image.ref_target_masks(
        src["height"],
        src["width"],
        clip0["target_h"],
        clip0["target_w"],
        num_persons,
        bbox=refs.get("bbox"),
        face_scale=case.params["generate_kwargs"]["face_scale"],
        lat_h=clip0["lat_h"],
        lat_w=clip0["lat_w"],
    )
    expected = case["e2e.clip0.ref_target_masks"]
    assert masks.dtype == expected.dtype
    assert torch.equal(masks, expected)


# ---------------------------------------------------------------------------------------
# masks by hand


def test_default_two_person_masks_at_source_size():
    m = image.source_person_masks(20, 41, 2, face_scale=0.1)
    # rows int(20*0.1)=2 .. int(20*0.9)=18; half = 20; cols int(2.0)=2 .. int(18.0)=18 and 22 .. 38
    exp1 = np.zeros((20, 41), np.float32)
    exp1[2:18, 2:18] = 1
    exp2 = np.zeros((20, 41), np.float32)
    exp2[2:18, 22:38] = 1
    np.testing.assert_array_equal(m[0].numpy(), exp1)
    np.testing.assert_array_equal(m[1].numpy(), exp2)
    np.testing.assert_array_equal(m[2].numpy(), 1 - exp1 - exp2)


def test_bbox_rows_then_columns():
    m = image.source_person_masks(
        10, 20, 2, bbox={"person1": [1, 2, 4, 8], "person2": [5, 10, 9, 19]}
    )
    assert m[0, 1:4, 2:8].all() and m[0].sum() == 3 * 6
    assert m[1, 5:9, 10:19].all() and m[1].sum() == 4 * 9
    assert m[2].sum() == 200 - 18 - 36


def test_one_person_masks_are_ones():
    m = image.ref_target_masks(80, 110, 48, 64, 1)  # lat 6 x 8 by default
    assert torch.equal(m, torch.ones(3, 6, 8))


def test_person_masks_follow_image_crop():
    # 100x300 source into 48x96: scale = max(0.48, 0.32) = 0.48 -> resized 48x144, crop left 24
    m = image.person_masks(100, 300, 48, 96, 2, bbox=[[0, 150, 100, 300], [0, 0, 100, 150]])
    assert m.shape == (3, 48, 96)
    # person 1 (right half of the source) covers resized columns 72..144 -> crop columns 48..96
    assert m[0, :, 48:].all() and not m[0, :, :48].any()
    assert m[1, :, :48].all() and not m[1, :, 48:].any()


def test_bbox_errors():
    with pytest.raises(image.ImageInputError) as e:
        image.source_person_masks(10, 20, 2, bbox=[[1, 2, 4, 8]])
    assert str(e.value) == (
        "bbox: 1 boxes for 2 persons; give one [x_min, y_min, x_max, y_max] per person "
        "(x = row, y = column, as in the reference)."
    )
    with pytest.raises(image.ImageInputError) as e:
        image.source_person_masks(10, 20, 2, bbox=[[1, 2, 4, 8], [0, 0, 15, 5]])
    assert str(e.value) == (
        "bbox of person 2: [0, 0, 15, 5] must satisfy 0 <= x_min < x_max <= 10 (rows) and "
        "0 <= y_min < y_max <= 20 (columns) for a 20x10 image. Fix: the first and third numbers "
        "index the height axis."
    )
    with pytest.raises(image.ImageInputError) as e:
        image.source_person_masks(10, 20, 3)
    assert str(e.value) == "num_persons 3: MultiTalk supports 1 or 2 persons."


# ---------------------------------------------------------------------------------------
# conversions


def _png_bytes(im: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = stdio.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    im.paste((0, 0, 255, 255), (0, 0, 16, 32))
    rgb = np.asarray(image.load_image(_png_bytes(im)))
    assert (rgb[:, :16] == [0, 0, 255]).all()
    assert (rgb[:, 16:] == [255, 255, 255]).all()


def test_exif_orientation_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    out = image.load_image(_png_bytes(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50  # white half is now on top


def test_grayscale_16bit_and_cmyk():
    g16 = Image.fromarray(np.full((20, 30), 0xABCD, np.uint16))
    rgb = np.asarray(image.load_image(_png_bytes(g16)))
    assert rgb.shape == (20, 30, 3) and (rgb == 0xAB).all()
    cmyk = Image.new("CMYK", (30, 20), (0, 255, 255, 0))  # pure red in CMYK
    rgb = np.asarray(image.load_image(_png_bytes(cmyk, "JPEG", quality=100)))
    assert rgb.shape == (20, 30, 3) and rgb[..., 0].mean() > 200 and rgb[..., 1:].mean() < 60


def test_huge_image_reduced_before_resize():
    im = Image.new("RGB", (9000 * 2 + 10, 40), (10, 20, 30))  # longer side > 2 x HUGE_SIDE
    out = image.load_image(im)
    assert out.size == (im.size[0] // 2, 20)


def test_explicit_size():
    im = Image.new("RGB", (100, 50), (0, 128, 255))
    p = image.prepare_image(im, explicit_size=(32, 48))
    assert p.bucket == "explicit" and p.cond.shape == (1, 3, 1, 32, 48)
    with pytest.raises(image.ImageInputError) as e:
        image.prepare_image(im, explicit_size=(30, 48))
    assert str(e.value) == (
        "explicit image size 30x48 (HxW): both sides must be positive multiples of 16 "
        "(VAE stride 8 x DiT patch 2). Fix: e.g. 32x48."
    )


# ---------------------------------------------------------------------------------------
# validation


def test_too_small(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(p)
    with pytest.raises(image.ImageInputError) as e:
        image.prepare_image(p)
    assert str(e.value) == (
        f"image {str(p)!r}: 1x1 pixels is too small; the minimum is 16x16 (it is upscaled to the "
        "size bucket, e.g. 896x448). Fix: pass a larger picture."
    )


def test_truncated_png(tmp_path):
    data = _png_bytes(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    )
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(image.ImageInputError) as e:
        image.prepare_image(p)
    msg = str(e.value)
    assert msg.startswith(f"image {str(p)!r}: the image data is damaged (")
    assert msg.endswith("Fix: re-export the picture (the file may be truncated).")


def test_non_image_file(tmp_path):
    p = tmp_path / "face.png"
    p.write_text("not a picture")
    with pytest.raises(image.ImageInputError) as e:
        image.prepare_image(p)
    assert str(e.value) == (
        f"image {str(p)!r}: not an image Pillow can read. Fix: pass a PNG, JPEG, WebP, BMP or TIFF picture."
    )


def test_empty_image_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(image.ImageInputError) as e:
        image.load_image(p)
    assert (
        str(e.value)
        == f"image {str(p)!r}: the file is empty (0 bytes). Fix: pass a PNG/JPEG/WebP picture."
    )


def test_unreadable_url():
    url = "https://127.0.0.1:9/face.png"
    with pytest.raises(InputError) as e:
        image.load_image(url)
    assert str(e.value).startswith(f"image {url!r}: cannot be read (")


def test_decompression_bomb_guard():
    im = Image.new("1", (20001, 20001))  # 1-bit: small in memory, too many pixels
    with pytest.raises(image.ImageInputError) as e:
        image.load_image(im)
    assert str(e.value) == (
        "image '<PIL 1 20001x20001>': 20001x20001 = 400040001 pixels exceeds the 144000000-pixel "
        "limit (decompression-bomb guard). Fix: downscale the picture first."
    )


def test_unknown_bucket_size():
    with pytest.raises(image.ImageInputError) as e:
        image.prepare_image(Image.new("RGB", (32, 32)), size="multitalk-1080")
    assert (
        str(e.value)
        == "image size bucket: size 'multitalk-1080': allowed multitalk-480, multitalk-720."
    )


def test_plot_crop_figure():
    import matplotlib

    matplotlib.use("Agg")
    src = Image.new("RGB", (130, 70), (200, 100, 50))
    prepared = image.prepare_image(src, "multitalk-480", "tiny")
    masks = image.ref_target_masks(70, 130, *prepared.target_hw, 2, lat_h=6, lat_w=12)
    fig = image.plot_crop(src, prepared, masks)
    assert [ax.get_title() for ax in fig.axes] == [
        "source 130x70, bucket 0.50",
        "cond 96x48 (resized 96x52)",
        "person 1 (red), person 2 (blue)",
    ]
