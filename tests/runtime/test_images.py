"""Finding images, and bad input images giving clear errors naming the problem (runtime/images.py)."""
import cv2
import numpy as np
import pytest

from pfpn.runtime.images import ImageError, MAX_SIDE, list_images, load_image, read_image


@pytest.mark.parametrize("image,message", [
    (np.zeros((10, 12), np.uint8), "grey image"),
    (np.zeros((10, 12, 1), np.uint8), "grey image"),
    (np.zeros((10, 12, 4), np.uint8), "4-channel"),
    (np.zeros((10, 12, 3), np.float32), "expected uint8"),
    (np.zeros((10, 12, 3), np.uint16), "expected uint8"),
    (np.zeros((0, 12, 3), np.uint8), "empty image"),
    (np.zeros((10, 12, 2), np.uint8), "expected an (H, W, 3)"),
    ([[1, 2, 3]], "expected a numpy array"),
])
def test_bad_arrays(image, message):
    with pytest.raises(ImageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_image(image)


def test_huge_image_is_refused_before_allocating():
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), shape=(MAX_SIDE + 1, 10, 3), strides=(0, 0, 1))
    with pytest.raises(ImageError, match="too large"):
        load_image(huge)


def test_files(tmp_path):
    img = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)
    cv2.imwrite(str(tmp_path / "ok.png"), img)
    assert np.array_equal(read_image(tmp_path / "ok.png"), img)
    cv2.imwrite(str(tmp_path / "ok.jpg"), img)
    assert read_image(tmp_path / "ok.jpg").shape == (40, 50, 3)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    with pytest.raises(ImageError, match="cannot decode"):
        read_image(tmp_path / "text.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.jpg")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 20])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.png")
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), img[..., 0])
    assert read_image(grey).shape == (40, 50, 3)  # files are decoded as colour, like the reference


def test_decode_image_reads_what_read_image_reads(tmp_path):
    from pfpn.runtime.images import decode_image, read_image

    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    for ext in (".png", ".jpg"):
        path = tmp_path / f"a{ext}"
        cv2.imwrite(str(path), image)
        assert np.array_equal(decode_image(path.read_bytes()), read_image(path))


def test_decode_image_refuses_bad_data_by_name():
    from pfpn.runtime.images import decode_image

    with pytest.raises(ImageError, match="request 3: empty data"):
        decode_image(b"", "request 3")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(b"not an image at all", "x")
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageError, match="truncated"):
        decode_image(png[:-20], "x")
    # a header claiming 30000 x 30000: refused before anything is decoded (or allocated)
    huge_png = png[:16] + (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big") + png[24:]
    with pytest.raises(ImageError, match="the header says 30000x30000, too large"):
        decode_image(huge_png, "x")
    jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    sof = next(i for i in range(2, len(jpg) - 1) if jpg[i] == 0xFF and jpg[i + 1] == 0xC0)
    huge_jpg = jpg[:sof + 5] + (30000).to_bytes(2, "big") + (20000).to_bytes(2, "big") + jpg[sof + 9:]
    with pytest.raises(ImageError, match="30000x20000, too large"):
        decode_image(huge_jpg, "x")


def test_list_images_from_folders_and_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.JPG", "a.png", "c.webp", "notes.txt", "d.tiff"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.png").mkdir()  # a folder with an image-like name is not an image
    assert [p.name for p in list_images(folder)] == ["a.png", "b.JPG", "c.webp", "d.tiff"]
    assert [p.name for p in list_images(folder, count=2)] == ["a.png", "b.JPG"]
    # files are taken as given, in order, also before a folder's listing; a missing image file is
    # left to read_image (which names it), a missing folder is refused here
    single = tmp_path / "z.jpg"
    assert list_images([single, folder], count=2) == [single, folder / "a.png"]
    with pytest.raises(FileNotFoundError, match="--calib-images: .*missing does not exist"):
        list_images(tmp_path / "missing", what="--calib-images")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="--verify-images: no .jpg/.jpeg/.png"):
        list_images(tmp_path / "empty", what="--verify-images")
    with pytest.raises(ImageError, match="count must be >= 1"):
        list_images(folder, count=0)
