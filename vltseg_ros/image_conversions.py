"""sensor_msgs Image / CompressedImage <-> numpy.

On a ROS 2 install cv_bridge does the conversions; where it is not importable (pip-only machines) rosbags-image
does, after the row padding (`step` > width x bytes per pixel) is stripped here. Both paths validate the message
first, so malformed frames fail the same way: one VLTSegError line that says what was wrong.
"""
from __future__ import annotations

import io
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import PIL.Image
from rosbags.image import ImageError, compressed_image_to_cvimage, image_to_cvimage
from rosbags.image.image import convert_color, to_cvtype
from sensor_msgs.msg import CompressedImage, Image

from vltseg_core.errors import VLTSegError

try:  # a ROS 2 install; the PyPI `cv-bridge` is an unrelated ROS 1 copy and is never installed by us
    from cv_bridge import CvBridge, CvBridgeError

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:  # pragma: no cover - depends on the machine
    CvBridgeError = ImageError
    _BRIDGE = None


def _one_line(exc: Exception) -> str:
    """OpenCV errors span several lines; the node logs one."""
    return " ".join(str(exc).split())


def _check_size(width: int, height: int, max_pixels: int, where: str) -> None:
    if width <= 0 or height <= 0:
        raise VLTSegError(f"empty {width}x{height} image on {where} (expected width and height > 0)")
    if width * height > max_pixels:
        raise VLTSegError(f"{width}x{height} image on {where} has more than max_image_pixels={max_pixels} pixels")


def _row_bytes(msg: Image, where: str) -> int:
    """Bytes per row without padding, after checking encoding, step and data length."""
    try:
        depth, _, _, channels = to_cvtype(msg.encoding)
    except ImageError:
        raise VLTSegError(f"unsupported encoding '{msg.encoding}' on {where} (expected rgb8, bgr8, mono8, "
                          "bayer_*8, yuv422, yuv422_yuy2, rgba8, bgra8 or a 16-bit variant)") from None
    row_bytes = msg.width * channels * depth // 8
    if msg.step < row_bytes:
        raise VLTSegError(f"step {msg.step} < width*bytes_per_pixel={row_bytes} for {msg.width}x{msg.height} "
                          f"{msg.encoding} on {where}")
    if len(msg.data) < msg.step * msg.height:
        raise VLTSegError(f"truncated image on {where}: {len(msg.data)} bytes < step*height={msg.step * msg.height}")
    return row_bytes


def image_to_rgb(msg: Image, max_pixels: int, where: str = "image") -> np.ndarray:
    """sensor_msgs/Image in any encoding cv_bridge / rosbags-image knows -> HxWx3 uint8 RGB."""
    _check_size(msg.width, msg.height, max_pixels, where)
    row_bytes = _row_bytes(msg, where)
    try:
        if _BRIDGE is not None:
            rgb = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        else:
            data = np.frombuffer(msg.data, np.uint8)[: msg.step * msg.height]
            rows = np.ascontiguousarray(data.reshape(msg.height, msg.step)[:, :row_bytes])
            plain = SimpleNamespace(height=msg.height, width=msg.width, encoding=msg.encoding,
                                    is_bigendian=msg.is_bigendian, data=rows)
            rgb = image_to_cvimage(plain, "rgb8")
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
    """sensor_msgs/CompressedImage (jpeg / png, colour or grey) -> HxWx3 uint8 RGB."""
    if len(msg.data) == 0:
        raise VLTSegError(f"empty CompressedImage on {where} (format '{msg.format}'; expected jpeg or png bytes)")
    _check_header_size(bytes(msg.data), max_pixels, where)
    try:
        if _BRIDGE is not None:
            img = _BRIDGE.compressed_imgmsg_to_cv2(msg, desired_encoding="passthrough")
        else:
            img = compressed_image_to_cvimage(msg)
    except (CvBridgeError, ImageError, cv2.error, AssertionError, ValueError) as exc:
        img = None
        reason = _one_line(exc)
    else:
        reason = "decoder returned nothing"
    if img is None or getattr(img, "size", 0) == 0:
        raise VLTSegError(f"undecodable CompressedImage on {where} (format '{msg.format}', {len(msg.data)} bytes: "
                          f"{reason}; expected jpeg or png)")
    _check_size(img.shape[1], img.shape[0], max_pixels, where)
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
