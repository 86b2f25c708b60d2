"""Image / CompressedImage -> RGB for every encoding the node accepts, row padding (also by a number of bytes that
is not a whole number of pixels), 16-bit frames, and the malformed frames the node must skip (each one raises one
VLTSegError line). Run where cv_bridge is importable (the ROS 2 overlay CI, `./run.sh test-ros`), every case also
goes through cv_bridge and is compared with the rosbags-image path (`both_converters`)."""
import importlib.metadata
import struct
import zlib

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from vltseg_core.errors import VLTSegError
from vltseg_ros import image_conversions
from vltseg_ros.image_conversions import array_to_image, compressed_to_rgb, image_to_rgb

MAX = 4096 * 4096
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
HAS_BRIDGE = image_conversions._BRIDGE is not None


def rosbags_only(monkeypatch) -> None:
    monkeypatch.setattr(image_conversions, "_BRIDGE", None)


@pytest.fixture(params=["cv_bridge", "rosbags-image"])
def converter(request, monkeypatch) -> str:
    """Each test runs through cv_bridge (skipped where it is not importable) and through rosbags-image."""
    if request.param == "cv_bridge" and not HAS_BRIDGE:
        pytest.skip("cv_bridge not importable (a ROS 2 install; the overlay CI runs this case)")
    if request.param == "rosbags-image":
        rosbags_only(monkeypatch)
    return request.param


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    """An Image whose rows carry `pad` extra bytes (step > width * bytes per pixel)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 77, np.uint8)], axis=1)
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 1, 2, 3, 6])  # 1, 2: not a whole number of rgb8 pixels; 3: of rgb8 ones
def test_rgb_bgr_mono_with_and_without_row_padding(pad, converter):
    assert np.array_equal(image_to_rgb(make_image(RGB, "rgb8", pad), MAX), RGB)
    assert np.array_equal(image_to_rgb(make_image(RGB[..., ::-1].copy(), "bgr8", pad), MAX), RGB)
    grey = RGB[..., 0].copy()
    assert np.array_equal(image_to_rgb(make_image(grey, "mono8", pad), MAX), np.repeat(grey[..., None], 3, 2))


@pytest.mark.parametrize("encoding,red,blue", [  # (row, col) of R and B in each 2x2 cell; G elsewhere
    ("bayer_rggb8", (0, 0), (1, 1)),
    ("bayer_bggr8", (1, 1), (0, 0)),
    ("bayer_gbrg8", (1, 0), (0, 1)),
    ("bayer_grbg8", (0, 1), (1, 0)),
])
def test_bayer_patterns_demosaic_to_the_right_colour(encoding, red, blue, converter):
    colour = (200, 120, 40)
    mosaic = np.full((8, 8), colour[1], np.uint8)
    mosaic[red[0]::2, red[1]::2] = colour[0]
    mosaic[blue[0]::2, blue[1]::2] = colour[2]
    rgb = image_to_rgb(make_image(mosaic, encoding, pad=4), MAX)
    assert np.abs(rgb[2:-2, 2:-2].astype(int) - colour).max() <= 2


@pytest.mark.parametrize("encoding,order", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV")])
def test_yuv422_variants(encoding, order, converter):
    colour = np.array([180, 90, 30])
    r, g, b = colour  # BT.601 limited range, as camera drivers send it
    y = round(16 + 0.257 * r + 0.504 * g + 0.098 * b)
    u = round(128 - 0.148 * r - 0.291 * g + 0.439 * b)
    v = round(128 + 0.439 * r - 0.368 * g - 0.071 * b)
    cell = {"UYVY": [u, y, v, y], "YUYV": [y, u, y, v]}[order]
    packed = np.tile(np.array(cell, np.uint8), (4, 4)).reshape(4, 8, 2)  # 4 rows x 8 px x 2 bytes
    rgb = image_to_rgb(make_image(packed, encoding, pad=2), MAX)
    assert rgb.shape == (4, 8, 3)
    assert np.abs(rgb.astype(int) - colour).max() <= 4


def test_row_padding_by_part_of_a_pixel_gives_the_unpadded_frame_on_both_converters(monkeypatch):
    """A 96x125 rgb8 frame with 4-byte aligned rows (step 376) or one spare byte (377): cv_bridge alone assumes
    `step` is a whole number of pixels and garbles it; the node must give exactly the unpadded frame on both."""
    rgb = RNG.integers(0, 256, (96, 125, 3), dtype=np.uint8)
    for pad in (1, 2):
        results = {"with cv_bridge" if HAS_BRIDGE else "default": image_to_rgb(make_image(rgb, "rgb8", pad), MAX)}
        with monkeypatch.context() as patch:
            rosbags_only(patch)
            results["rosbags-image"] = image_to_rgb(make_image(rgb, "rgb8", pad), MAX)
        for name, result in results.items():
            assert np.array_equal(result, rgb), f"step {375 + pad}, {name}"


def sixteen_bit(pixels8: np.ndarray, big_endian: bool) -> np.ndarray:
    """16-bit samples whose high byte is `pixels8` and whose low byte is noise, as bytes in the given order."""
    wide = pixels8.astype(np.uint16) << 8 | RNG.integers(0, 256, pixels8.shape, dtype=np.uint16)
    return wide.astype(">u2" if big_endian else "<u2").view(np.uint8).reshape(*pixels8.shape[:2], -1)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "mono16", "rgba16", "bgra16", "bayer_rggb16"])
def test_16_bit_frames_keep_their_high_byte(encoding, big_endian, converter):
    """Each 16-bit encoding gives what its 8-bit twin gives for the high bytes, with odd padding."""
    twin = encoding.replace("16", "8")
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4, "bayer_rggb8": 1}[twin]
    pixels8 = RNG.integers(0, 256, (6, 10, channels), dtype=np.uint8).reshape(6, 10, channels).squeeze()
    msg = make_image(sixteen_bit(pixels8, big_endian), encoding, pad=3)
    msg.is_bigendian = int(big_endian)
    assert np.array_equal(image_to_rgb(msg, MAX), image_to_rgb(make_image(pixels8, twin, pad=1), MAX))


def test_16_bit_png_is_the_same_as_the_16_bit_raw_frame(converter):
    """A 16-bit PNG CompressedImage gives 8-bit RGB equal to the rgb16 Image of the same pixels (cv_bridge's
    passthrough decoding gave uint16, which the node then skipped)."""
    wide = RGB.astype(np.uint16) << 8 | RNG.integers(0, 256, RGB.shape, dtype=np.uint16)
    png = CompressedImage(format="png")
    png.data = cv2.imencode(".png", np.ascontiguousarray(wide[..., ::-1]))[1].tobytes()
    raw = make_image(wide.view(np.uint8).reshape(6, 10, 6), "rgb16")
    assert np.array_equal(compressed_to_rgb(png, MAX), RGB)
    assert np.array_equal(image_to_rgb(raw, MAX), RGB)


def test_one_opencv_4_build_provides_cv2():
    """cv_bridge is built against OpenCV 4 (OpenCV 5 renumbered CV_8UC3 & co.): every installed distribution that
    provides `cv2` (opencv-python-headless, and opencv-python pulled by the test extra) is the same 4.x build."""
    providers = {dist.metadata["Name"]: dist.version for dist in importlib.metadata.distributions()
                 if any(str(f) == "cv2/__init__.py" for f in dist.files or ())}
    assert cv2.__version__.startswith("4."), f"OpenCV {cv2.__version__}: cv_bridge needs OpenCV 4"
    assert all(version.startswith(cv2.__version__) for version in providers.values()), providers


def test_cv_bridge_agrees_with_this_opencv():
    """cv_bridge's C++ side (the OpenCV it was built with) and the Python cv2 must number the types alike, or
    every conversion fails (`KeyError: 16` in cv2_to_imgmsg with pip OpenCV 5)."""
    if not HAS_BRIDGE:
        pytest.skip("cv_bridge not importable (a ROS 2 install; the overlay CI runs this)")
    bridge = image_conversions._BRIDGE
    assert bridge.encoding_to_cvtype2("rgb8") == cv2.CV_8UC3 and bridge.encoding_to_cvtype2("mono16") == cv2.CV_16UC1
    msg = bridge.cv2_to_imgmsg(RGB, encoding="rgb8")
    assert np.array_equal(bridge.imgmsg_to_cv2(msg, desired_encoding="bgr8"), RGB[..., ::-1])


def test_compressed_png_is_exact_and_jpeg_close(converter):
    png = CompressedImage(format="png")
    png.data = cv2.imencode(".png", RGB[..., ::-1])[1].tobytes()
    assert np.array_equal(compressed_to_rgb(png, MAX), RGB)
    smooth = np.full((16, 16, 3), (30, 140, 220), np.uint8)
    jpeg = CompressedImage(format="jpeg")
    jpeg.data = cv2.imencode(".jpg", smooth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert np.abs(compressed_to_rgb(jpeg, MAX).astype(int) - smooth).max() <= 4
    grey = CompressedImage(format="png")
    grey.data = cv2.imencode(".png", RGB[..., 1])[1].tobytes()
    assert np.array_equal(compressed_to_rgb(grey, MAX), np.repeat(RGB[..., 1:2], 3, 2))


def test_outputs_carry_the_header_and_encoding(converter):
    header = Header(frame_id="cam0")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    mask = array_to_image(RGB[..., 0].copy(), "mono8", header)
    assert (mask.header, mask.encoding, mask.width, mask.height, mask.step) == (header, "mono8", 10, 6, 10)
    assert np.array_equal(image_to_rgb(array_to_image(RGB, "rgb8", header), MAX), RGB)


def bad_frames():
    unknown = make_image(RGB, "rgb8")
    unknown.encoding = "weird42"
    short_step = make_image(RGB, "rgb8")
    short_step.step = 20
    truncated = make_image(RGB, "rgb8")
    truncated.data = bytes(truncated.data[:-7])
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    huge = Image(height=5000, width=5000, encoding="mono8", step=5000)  # rejected before its data is read
    odd_yuv = make_image(np.zeros((2, 3, 2), np.uint8), "yuv422")  # 3 px wide: not a whole UYVY pair
    generic = make_image(RGB, "8UC3")  # no colour order: rosbags-image took it as bgr8, cv_bridge refused it
    depth = make_image(np.zeros((2, 3, 2), np.uint8), "16UC1")
    return {"unknown encoding": (unknown, "unsupported encoding"), "step too small": (short_step, "step 20"),
            "truncated": (truncated, "truncated"), "0x0": (empty, "empty 0x0"),
            "huge": (huge, "max_image_pixels"), "odd yuv width": (odd_yuv, "even width"),
            "8UC3": (generic, "unsupported encoding '8UC3'"), "16UC1": (depth, "unsupported encoding '16UC1'")}


@pytest.mark.parametrize("case", list(bad_frames()))
def test_malformed_raw_frames_raise_one_clear_line(case, converter):
    msg, words = bad_frames()[case]
    with pytest.raises(VLTSegError, match=words) as info:
        image_to_rgb(msg, MAX, where="/cam/image")
    assert "\n" not in str(info.value) and "/cam/image" in str(info.value)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 not really a jpeg", bytes(100)])
def test_undecodable_compressed_frames_raise(data, converter):
    msg = CompressedImage(format="jpeg")
    msg.data = data
    with pytest.raises(VLTSegError, match="CompressedImage on image/compressed"):
        compressed_to_rgb(msg, MAX)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height (signature, IHDR, a token IDAT, IEND): decoding it would need the pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case", ["real png over a small limit", "header of a 100000x100000 png"])
def test_huge_compressed_frame_is_rejected_from_its_header_before_decoding(case, monkeypatch):
    def no_decoding(*args, **kwargs):
        pytest.fail("the frame was decoded before its size was checked")
    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    msg = CompressedImage(format="png")
    if case.startswith("real"):
        msg.data, limit, words = cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes(), 1000, "64x64"
    else:
        msg.data, limit, words = png_header(100_000, 100_000), MAX, "more than max_image_pixels"
    with pytest.raises(VLTSegError, match=words) as info:
        compressed_to_rgb(msg, limit, where="/cam/image/compressed")
    assert f"max_image_pixels={limit}" in str(info.value) and "\n" not in str(info.value)
