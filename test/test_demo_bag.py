"""The demo bag: the pinned dashcam wheel, the chessboard calibration, the bag written from the video."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin

from vltseg_ros.demo_bag import (CALIBRATION_SIZE, FRAME_ID, IMAGE_TOPIC, INFO_TOPIC, TYPESTORE, WHEEL,
                                 _calibration_images, calibrate, prepare_demo_bag, write_video_bag)


@pytest.fixture(scope="module")
def wheel():
    from vltseg_core.assets import fetch_wheel

    return fetch_wheel(*WHEEL)  # `vltseg setup` has it in the cache already


@pytest.fixture(scope="module")
def calibration(wheel):
    return calibrate(_calibration_images(wheel))


def test_chessboard_calibration_is_a_real_pinhole_camera(calibration):
    assert calibration.images_used == 15  # 17 boards found at 9x6, two of them on 1281x721 images
    assert (calibration.width, calibration.height) == CALIBRATION_SIZE
    assert calibration.rms < 1.5  # pixels
    K = np.array(calibration.K).reshape(3, 3)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    assert abs(fx - fy) / fx < 0.02 and 900 < fx < 1400  # square pixels; ~60 deg horizontal field of view
    assert abs(cx - 640) < 64 and abs(cy - 360) < 64
    assert calibration.D[0] < -0.1  # the clearly visible barrel distortion of this camera


def test_calibration_scales_with_the_video_size(calibration):
    half = calibration.scaled(640, 360)
    np.testing.assert_allclose(np.array(half.K).reshape(3, 3)[:2], np.array(calibration.K).reshape(3, 3)[:2] / 2)
    assert half.D == calibration.D and np.array(half.K).reshape(3, 3)[2, 2] == 1.0


def test_too_few_boards_is_a_clear_error():
    from vltseg_core.errors import VLTSegError

    with pytest.raises(VLTSegError, match="chessboard images with 9x6 inner corners found"):
        calibrate([np.zeros((720, 1280), np.uint8)])


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_write_video_bag_from_a_real_clip(tmp_path, calibration, storage):
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 36))
    for i in range(5):
        writer.write(np.full((36, 64, 3), 40 * i, np.uint8))
    writer.release()
    calib = calibration.scaled(64, 36)
    assert write_video_bag(video, tmp_path / "bag", calib, storage, max_frames=4) == 4
    with Reader(tmp_path / "bag") as reader:
        msgs = [(c.topic, t, TYPESTORE.deserialize_cdr(d, c.msgtype))
                for c, t, d in reader.messages(reader.connections)]
    images = [(t, m) for topic, t, m in msgs if topic == IMAGE_TOPIC]
    assert [t for t, _ in images] == [images[0][0] + i * 100_000_000 for i in range(4)]  # 10 fps video time
    first = cv2.imdecode(np.asarray(images[3][1].data), cv2.IMREAD_COLOR)
    assert first.shape == (36, 64, 3) and abs(int(first.mean()) - 120) <= 3


def test_prepared_demo_bag(calibration):
    bag = prepare_demo_bag()
    assert prepare_demo_bag() == bag  # idempotent
    with Reader(bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {IMAGE_TOPIC: 221, INFO_TOPIC: 221}
        msgs = {}
        for conn, timestamp, data in reader.messages(reader.connections):
            msgs.setdefault(conn.topic, []).append((timestamp, TYPESTORE.deserialize_cdr(data, conn.msgtype)))
            if len(msgs.get(INFO_TOPIC, [])) == 3:
                break
    import cv2

    stamps = [t for t, _ in msgs[IMAGE_TOPIC][:3]]
    assert np.diff(stamps).tolist() == [40_000_000, 40_000_000]  # 25 fps
    for (t_img, img), (t_info, info) in zip(msgs[IMAGE_TOPIC], msgs[INFO_TOPIC]):
        assert t_img == t_info and img.header == info.header and img.header.frame_id == FRAME_ID
        assert img.format == "jpeg"
        frame = cv2.imdecode(np.asarray(img.data), cv2.IMREAD_COLOR)
        assert frame.shape == (540, 960, 3) and (info.width, info.height) == (960, 540)
        expected = calibration.scaled(960, 540)
        np.testing.assert_allclose(info.k, expected.K, rtol=1e-6)
        assert info.distortion_model == "plumb_bob" and len(info.d) == 5
        np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4)[:, :3], np.asarray(info.k).reshape(3, 3))
