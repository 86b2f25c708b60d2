"""Class metadata for consumers of the mask: vision_msgs/LabelInfo on a ROS 2 install, else the class table as
YAML text in a std_msgs/String. Either way it is published once on a transient-local (latched) topic."""
from __future__ import annotations

import yaml
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from vltseg_core.classes import ClassTable

try:
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pip-only machines: no vision_msgs wheel exists
    LabelInfo = VisionClass = None
    from std_msgs.msg import String

LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def label_info_type() -> type:
    return LabelInfo if LabelInfo is not None else String


def label_info_message(table: ClassTable, stamp) -> object:
    """LabelInfo (class_id -> class_name) or String (YAML: name, ignore_index, classes with id/name/color)."""
    if LabelInfo is not None:
        msg = LabelInfo(class_map=[VisionClass(class_id=i, class_name=n) for i, n in enumerate(table.names)],
                        threshold=0.0)
        msg.header.stamp = stamp
        return msg
    classes = [{"id": i, "name": n, "color": [int(c) for c in table.colors[i]]} for i, n in enumerate(table.names)]
    return String(data=yaml.safe_dump({"name": table.name, "ignore_index": table.ignore_index, "classes": classes},
                                      sort_keys=False))
