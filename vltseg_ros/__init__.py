"""VLTSeg for ROS 2: the segmentation node, message conversions and rosbag tools over vltseg_core."""
