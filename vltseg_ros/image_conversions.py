"""sensor_msgs Image / CompressedImage <-> numpy.

One path for every machine: the frame is validated, its row padding (`step` > width x bytes per pixel, by any
number of bytes) is stripped and 16-bit samples are reduced to their high byte here, so the colour converter
(cv_bridge on a ROS 2 install, rosbags-image where cv_bridge is not importable) only ever sees an unpadded 8-bit
frame, on which both give the same pixels. cv_bridge's `imgmsg_to_cv2` assumes `step` is a whole number of pixels,
and the two disagree by one on 16-bit scaling, so neither may see anything else. CompressedImage is decoded with
OpenCV's imdecode on both (which is what cv_bridge does). Malformed frames fail the same way everywhere: one
VLTSegError line that says what was wrong.
"""
from __future__ import annotations

import array
import io
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import PIL.Image
from rosbags.image import ImageError, image_to_cvimage
from rosbags.image.image import convert_color
from sensor_msgs.msg import CompressedImage, Image

from vltseg_core.errors import VLTSegError

try:  # a ROS 2 install; the PyPI `cv-bridge` is an unrelated ROS 1 copy and is never installed by us
    from cv_bridge import CvBridge, CvBridgeError

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:  # pragma: no cover - depends on the machine
    CvBridgeError = ImageError
    _BRIDGE = None

BAYER = ("bayer_rggb", "bayer_bggr", "bayer_gbrg", "bayer_grbg")
# encoding -> channels per pixel; the 16-bit variants are reduced to the 8-bit encoding of the same layout
ENCODINGS_8BIT = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4, "yuv422": 2, "yuv422_yuy2": 2,
                  **{f"{b}8": 1 for b in BAYER}}
ENCODINGS_16BIT = {"rgb16": "rgb8", "bgr16": "bgr8", "mono16": "mono8", "rgba16": "rgba8", "bgra16": "bgra8",
                   **{f"{b}16": f"{b}8" for b in BAYER}}


def _one_line(exc: Exception) -> str:
    """OpenCV errors span several lines; the node logs one."""
    return " ".join(str(exc).split())


def _check_size(width: int, height: int, max_pixels: int, where: str) -> None:
    if width <= 0 or height <= 0:
        raise VLTSegError(f"empty {width}x{height} image on {where} (expected width and height > 0)")
    if width * height > max_pixels:
        raise VLTSegError(f"{width}x{height} image on {where} has more than max_image_pixels={max_pixels} pixels")


def _unpadded_8bit(msg: Image, where: str) -> tuple[str, np.ndarray]:
    """(8-bit encoding, height x row-bytes uint8 rows without padding), after checking encoding, step and data
    length; 16-bit samples keep their high byte (whatever `is_bigendian` says), the same reduction as 16-bit
    PNGs get."""
    encoding = ENCODINGS_16BIT.get(msg.encoding, msg.encoding)
    if encoding not in ENCODINGS_8BIT:
        raise VLTSegError(f"unsupported encoding '{msg.encoding}' on {where} (expected rgb8, bgr8, mono8, "
                          "bayer_*8, yuv422, yuv422_yuy2, rgba8, bgra8 or a 16-bit variant)")
    sample_bytes = 2 if msg.encoding in ENCODINGS_16BIT else 1
    row_bytes = msg.width * ENCODINGS_8BIT[encoding] * sample_bytes
    if msg.step < row_bytes:
        raise VLTSegError(f"step {msg.step} < width*bytes_per_pixel={row_bytes} for {msg.width}x{msg.height} "
                          f"{msg.encoding} on {where}")
    if len(msg.data) < msg.step * msg.height:
        raise VLTSegError(f"truncated image on {where}: {len(msg.data)} bytes < step*height={msg.step * msg.height}")
    if encoding.startswith("yuv422") and msg.width % 2:
        raise VLTSegError(f"{msg.encoding} image on {where} is {msg.width} pixels wide (expected an even width: "
                          "two pixels share one U and one V sample)")
    rows = np.frombuffer(msg.data, np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row_bytes]
    if sample_bytes == 2:
        rows = rows[:, 0 if msg.is_bigendian else 1::2]
    return encoding, rows


def image_to_rgb(msg: Image, max_pixels: int, where: str = "image") -> np.ndarray:
    """sensor_msgs/Image in any accepted encoding -> HxWx3 uint8 RGB, the same pixels with or without cv_bridge."""
    _check_size(msg.width, msg.height, max_pixels, where)
    encoding, rows = _unpadded_8bit(msg, where)
    try:
        if _BRIDGE is not None:
            plain = msg
            if (msg.encoding, msg.step) != (encoding, rows.shape[1]):  # padded or 16-bit: an unpadded 8-bit copy
                plain = Image(height=msg.height, width=msg.width, encoding=encoding, step=rows.shape[1],
                              data=array.array("B", np.ascontiguousarray(rows).tobytes()))
            rgb = _BRIDGE.imgmsg_to_cv2(plain, desired_encoding="rgb8")
        else:
            rgb = image_to_cvimage(SimpleNamespace(height=msg.height, width=msg.width, encoding=encoding,
                                                   is_bigendian=0, data=np.ascontiguousarray(rows)), "rgb8")
    except (CvBridgeError, ImageError, cv2.error, ValueError, TypeError) as exc:
        raise VLTSegError(f"cannot convert {msg.encoding} image on {where} to rgb8 ({_one_line(exc)})") from None
    if rgb.shape != (msg.height, msg.width, 3):
        raise VLTSegError(f"{msg.encoding} image on {where} decoded to shape {rgb.shape} "
                          f"(expected {(msg.height, msg.width, 3)})")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _check_header_size(data: bytes, max_pixels: int, where: str) -> None:
    """Reject an oversized jpeg/png from its header, before decoding allocates the pixels. PIL's open reads only
    the header; what it cannot read is left to the decoder (and checked again after decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)  # our limit decides, not PIL's
            with PIL.Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except PIL.Image.DecompressionBombError as exc:  # > 2 x PIL's MAX_IMAGE_PIXELS: over ours unless ours is higher
        if max_pixels <= 2 * (PIL.Image.MAX_IMAGE_PIXELS or 0):
            raise VLTSegError(f"image on {where} has more than max_image_pixels={max_pixels} pixels "
                              f"({_one_line(exc)})") from None
        return
    except (OSError, ValueError):  # PIL.UnidentifiedImageError is an OSError
        return
    _check_size(width, height, max_pixels, where)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int, where: str = "image/compressed") -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png; grey, colour or with alpha; 8 or 16 bit) -> HxWx3 uint8 RGB."""
    if len(msg.data) == 0:
        raise VLTSegError(f"empty CompressedImage on {where} (format '{msg.format}'; expected jpeg or png bytes)")
    _check_header_size(bytes(msg.data), max_pixels, where)
    try:
        img = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
        reason = "decoder returned nothing"
    except cv2.error as exc:
        img, reason = None, _one_line(exc)
    if img is None or img.size == 0 or img.dtype not in (np.uint8, np.uint16) or \
            (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise VLTSegError(f"undecodable CompressedImage on {where} (format '{msg.format}', {len(msg.data)} bytes: "
                          f"{reason if img is None else f'{img.dtype} {img.shape}'}; expected jpeg or png)")
    _check_size(img.shape[1], img.shape[0], max_pixels, where)
    if img.dtype == np.uint16:  # the high byte, as for 16-bit raw frames
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return np.ascontiguousarray(convert_color(img.reshape(img.shape[:2]), "mono8", "rgb8"))
    return np.ascontiguousarray(convert_color(img, "bgra8" if img.shape[2] == 4 else "bgr8", "rgb8"))


def array_to_image(array: np.ndarray, encoding: str, header) -> Image:
    """HxW (mono8) or HxWx3 (rgb8) uint8 -> sensor_msgs/Image carrying exactly `header`."""
    if _BRIDGE is not None:
        msg = _BRIDGE.cv2_to_imgmsg(np.ascontiguousarray(array), encoding=encoding)
    else:
        msg = Image(height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=0,
                    step=array.shape[1] * (array.shape[2] if array.ndim == 3 else 1))
        msg.data = np.ascontiguousarray(array).tobytes()
    msg.header = header
    return msg
