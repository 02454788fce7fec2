"""Bad input images give clear errors naming the problem."""
import cv2
import numpy as np
import pytest

from runtime.images import ImageError, MAX_SIDE, load_image, read_image


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
