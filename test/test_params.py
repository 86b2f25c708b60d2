"""The node's declared parameters, config/segmentation_node.yaml and the README table must agree (names,
defaults, read-only flags, ranges), and a real node must declare them with those descriptors; QoS override
parameters apply to their own camera only."""
import json
import re

import pytest
import yaml
from rcl_interfaces.msg import ParameterType

from vltseg_ros.params import OUTPUT_PARAMS, PARAMS, descriptor


def yaml_params(repo_root):
    data = yaml.safe_load((repo_root / "config" / "segmentation_node.yaml").read_text())
    return data["/**"]["ros__parameters"]


def readme_rows(repo_root):
    """name -> (default, read-only, (low, high) or None) from rows like "| `x` | `4` | yes (1 to 64) |"."""
    text = (repo_root / "README.md").read_text()
    section = re.search(r"<!-- ros-params:begin -->(.*)<!-- ros-params:end -->", text, re.S).group(1)
    rows = re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \| (no|yes)(?: \(([-+.\de]+) to ([-+.\de]+)\))? \|",
                      section, re.M)
    return {name: (json.loads(default), change == "no", (float(low), float(high)) if low else None)
            for name, default, change, low, high in rows}


def declared_range(spec) -> tuple[float, float] | None:
    desc = descriptor(spec)
    ranges = desc.integer_range or desc.floating_point_range
    return (float(ranges[0].from_value), float(ranges[0].to_value)) if ranges else None


def test_yaml_sets_exactly_the_declared_parameters_with_their_defaults(repo_root):
    assert yaml_params(repo_root) == {spec.name: spec.default for spec in PARAMS}


def test_readme_table_documents_every_parameter(repo_root):
    expected = {spec.name: (spec.default, spec.read_only, declared_range(spec)) for spec in PARAMS + OUTPUT_PARAMS}
    assert readme_rows(repo_root) == expected


@pytest.fixture
def node():
    from ros_helpers import node_in_process

    with node_in_process() as node:
        yield node


def test_node_declares_them_with_types_ranges_and_read_only(node):
    declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}  # rclpy's own
    assert declared == {spec.name for spec in PARAMS}
    for spec in PARAMS:
        desc = node.describe_parameter(spec.name)
        assert desc.read_only == spec.read_only, spec.name
        assert node.get_parameter(spec.name).value == spec.default
        if spec.low is not None:
            assert desc.type in (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE)
            ranges = desc.integer_range or desc.floating_point_range
            assert (ranges[0].from_value, ranges[0].to_value) == (spec.low, spec.high), spec.name


def test_runtime_changes_are_checked(node):
    from rclpy.parameter import Parameter

    assert not node.set_parameters([Parameter("model", value="other")])[0].successful  # read-only
    assert not node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0].successful  # out of range
    assert not node.set_parameters([Parameter("max_batch_size", value="four")])[0].successful  # wrong type
    assert node.set_parameters([Parameter("overlay_alpha", value=0.25)])[0].successful
    assert node.get_parameter("overlay_alpha").value == 0.25


def test_qos_overrides_apply_to_their_own_camera_only():
    """rclpy writes overrides into the profile it is given: a shared default profile would pass camera a's
    reliable override on to camera b (and to the next activation)."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.qos import ReliabilityPolicy
    from ros_helpers import node_in_process, tiny_onnx

    from vltseg_ros.node import LIVE_INPUT

    overrides = {"model": str(tiny_onnx()), "backend": "onnxruntime", "cameras": ["a", "b"],
                 "qos_overrides./a/image.subscription.reliability": "reliable"}
    with node_in_process(**overrides) as node:
        for _ in range(2):  # configured and activated again: the same
            assert node.trigger_configure() == node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            reliability = {cam.name: cam.subscriptions[0].qos_profile.reliability for cam in node._cameras}
            assert reliability == {"a": ReliabilityPolicy.RELIABLE, "b": ReliabilityPolicy.BEST_EFFORT}
            assert node.trigger_deactivate() == node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert LIVE_INPUT.reliability == ReliabilityPolicy.BEST_EFFORT


def test_each_declared_qos_override_changes_the_subscription():
    """docs/ros.md promises qos_overrides.<topic>.subscription.{history,depth,reliability,durability}: each one is
    declared for every input and changes that input's subscription (durability was silently ignored)."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
    from ros_helpers import node_in_process, tiny_onnx

    overrides = {"history": ("keep_all", "history", HistoryPolicy.KEEP_ALL),
                 "depth": (5, "depth", 5),
                 "reliability": ("reliable", "reliability", ReliabilityPolicy.RELIABLE),
                 "durability": ("transient_local", "durability", DurabilityPolicy.TRANSIENT_LOCAL)}
    params = {f"qos_overrides./{policy}/image.subscription.{policy}": value
              for policy, (value, _, _) in overrides.items()}
    with node_in_process(model=str(tiny_onnx()), backend="onnxruntime", cameras=list(overrides), **params) as node:
        assert node.trigger_configure() == node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        declared = {name for name in node._parameters if name.startswith("qos_overrides.")}
        assert declared == {f"qos_overrides./{cam}/image.subscription.{policy}" for cam in overrides
                            for policy in overrides}
        live = {"history": HistoryPolicy.KEEP_LAST, "depth": 1, "reliability": ReliabilityPolicy.BEST_EFFORT,
                "durability": DurabilityPolicy.VOLATILE}
        for cam in node._cameras:
            profile = cam.subscriptions[0].qos_profile
            expected = dict(live, **{overrides[cam.name][1]: overrides[cam.name][2]})
            assert {policy: getattr(profile, policy) for policy in live} == expected, cam.name
        assert node.trigger_deactivate() == node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
