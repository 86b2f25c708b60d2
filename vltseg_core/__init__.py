"""VLTSeg core: model, data, training, evaluation, export and inference runtimes. No ROS imports."""

__version__ = "0.1.0"
