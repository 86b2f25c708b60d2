"""Reading recordings of either ROS generation with `rosbags` (no ROS install needed).

ROS 1 bags (format 2.0, `.bag`) and rosbag2 (sqlite3 or mcap, a directory or a bare `.mcap` / `.db3`) open through
one `AnyReader`, whose message types come from the definitions the bag carries (ROS 1 bags always do, mcap usually
does), so custom or older definitions deserialize as recorded; types a rosbag2 does not describe come from ROS 2
Jazzy. The output of a replay is always a rosbag2: in the input's storage, or mcap for a ROS 1 bag (one
self-describing file that carries the message definitions, the rosbag2 default since Iron).
"""
from __future__ import annotations

import re
import sqlite3
from collections import Counter
import struct
from pathlib import Path

import yaml
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag1 import ReaderError as Reader1Error
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2.errors import ReaderError
from rosbags.typesys import Stores, get_typestore

from vltseg_core.errors import VLTSegError

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)  # what replay writes, and the types a rosbag2 does not describe
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)
ROS1_SUFFIX = ".bag"
# What a damaged storage file raises while it is being read (ROS 1 chunks, sqlite3 and the mcap parser).
BAG_READ_ERRORS = (ReaderError, Reader1Error, AnyReaderError, sqlite3.Error, struct.error, EOFError, OSError,
                   ValueError, KeyError, AssertionError, OverflowError, IndexError)
# Single-channel integer/float data of more than 8 bits without a photometric encoding: depth or disparity maps.
DEPTH_ENCODING = re.compile(r"(16|32|64)[USF]C1")
STORAGE_NAMES = {StoragePlugin.MCAP: "mcap", StoragePlugin.SQLITE3: "sqlite3"}


def is_ros1(bag: Path) -> bool:
    return bag.suffix == ROS1_SUFFIX and not bag.is_dir()


def is_bag(path: Path) -> bool:
    """A ROS 1 bag file, a rosbag2 directory (metadata.yaml) or a bare rosbag2 storage file."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix in (ROS1_SUFFIX, ".mcap", ".db3")


def storage_of(bag: Path) -> StoragePlugin:
    """The storage plugin of a rosbag2 directory (metadata.yaml) or of a bare .mcap / .db3 file."""
    if bag.is_dir():
        try:
            meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
            identifier = meta["storage_identifier"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise VLTSegError(f"bag {bag} has no readable metadata.yaml ({exc}; expected a rosbag2 "
                              f"directory)") from None
    else:
        identifier = {".mcap": "mcap", ".db3": "sqlite3"}.get(bag.suffix, bag.suffix)
    plugins = {name: plugin for plugin, name in STORAGE_NAMES.items()}
    if identifier not in plugins:
        raise VLTSegError(f"bag {bag} uses storage '{identifier}' (expected a ROS 1 .bag, or a rosbag2 in sqlite3 "
                          f"or mcap)")
    return plugins[identifier]


def input_storage(bag: Path) -> str:
    """'rosbag1', 'sqlite3' or 'mcap' (checks a rosbag2's metadata)."""
    return "rosbag1" if is_ros1(bag) else STORAGE_NAMES[storage_of(bag)]


def output_storage(bag: Path) -> StoragePlugin:
    """The rosbag2 storage of the output: the input's own, or mcap for a ROS 1 bag."""
    return StoragePlugin.MCAP if is_ros1(bag) else storage_of(bag)


def open_bag(bag: Path) -> AnyReader:
    """An open AnyReader over one recording; a missing, truncated or corrupt bag is one clear error line."""
    if not bag.exists():
        raise VLTSegError(f"bag not found: {bag} (expected a ROS 1 .bag file, a rosbag2 directory, .mcap or .db3 "
                          f"file)")
    input_storage(bag)
    repair = ("`rosbag reindex` (ROS 1) repairs a recording that was cut off or never indexed" if is_ros1(bag) else
              "a recording that was cut off can often be repaired with `ros2 bag reindex` (sqlite3) or `mcap recover`")
    try:
        reader = AnyReader([bag], default_typestore=TYPESTORE)
        reader.open()
    except (*BAG_READ_ERRORS, FileNotFoundError) as exc:
        raise VLTSegError(f"bag {bag} is corrupt or truncated and cannot be opened ({exc}); {repair}") from None
    described = reader.typestore.fielddefs
    if reader.is2 and any(c.msgtype not in described for c in reader.connections):  # types it does not describe:
        reader.typestore.register({k: v for k, v in TYPESTORE.fielddefs.items() if k not in described})  # Jazzy's
    return reader


def find_bags(paths: list[Path]) -> list[Path]:
    """The recordings named: bags as given, and every bag inside a folder that is not itself a rosbag2 (recursive,
    in path order; the storage files inside a rosbag2 directory belong to it). A path that is neither is an error."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise VLTSegError(f"bag not found: {path} (expected a ROS 1 .bag file, a rosbag2 directory, .mcap or "
                              f".db3 file, or a folder of them)")
        if is_bag(path):
            found.append(path)
            continue
        if not path.is_dir():
            raise VLTSegError(f"{path} is not a bag (expected a ROS 1 .bag file, a rosbag2 directory, .mcap or .db3 "
                              f"file, or a folder of them)")
        inside = _bags_in(path)
        if not inside:
            raise VLTSegError(f"folder {path} holds no bag (expected .bag files, rosbag2 directories, .mcap or .db3 "
                              f"files)")
        found += inside
    duplicates = sorted(str(p) for p, n in Counter(p.absolute() for p in found).items() if n > 1)
    if duplicates:
        raise VLTSegError(f"bag named twice: {', '.join(duplicates)} (expected each recording once)")
    return found


def _bags_in(folder: Path) -> list[Path]:
    result = []
    for child in sorted(folder.iterdir()):
        if is_bag(child):
            result.append(child)
        elif child.is_dir():
            result += _bags_in(child)
    return result


def bag_bytes(bag: Path) -> int:
    """Size on disk of a bag (a rosbag2 directory: all its files), what sharding balances."""
    return sum(f.stat().st_size for f in bag.rglob("*") if f.is_file()) if bag.is_dir() else bag.stat().st_size


def ros2_header(header):
    """A ROS 2 std_msgs/Header with the input's stamp and frame_id (a ROS 1 header also has `seq`)."""
    types = TYPESTORE.types
    stamp = types["builtin_interfaces/msg/Time"](sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=str(header.frame_id))


def not_a_camera_frame(msgtype: str, msg) -> str | None:
    """Why an image message is not a camera colour/mono frame (depth, disparity), or None for one."""
    if msgtype == COMPRESSED:
        if "compresseddepth" in msg.format.lower():
            return f"compressedDepth image (format '{msg.format}'), not a camera frame"
    elif DEPTH_ENCODING.fullmatch(msg.encoding):
        return f"{msg.encoding} image (depth or disparity), not a camera frame"
    return None
