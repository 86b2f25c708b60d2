"""What can be checked of the launch files without `launch` installed (CI runs them for real on ROS 2, see
.github/workflows/ros2.yml and test/test_node_launch.py): they parse, what they reference exists, every parameter
they set is declared by the node, arguments forwarded to an included file are declared there, and argument
defaults agree with the node's parameter defaults."""
import ast
from pathlib import Path

import pytest
import yaml

from vltseg_ros.params import PARAMS

LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"
LAUNCH_FILES = sorted(LAUNCH_DIR.glob("*.launch.py"))
DECLARED = {spec.name: spec.default for spec in PARAMS} | {"use_sim_time": False}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def arguments(tree: ast.Module) -> dict[str, ast.expr]:
    """The file's ARGUMENTS table: launch argument name -> its (default, description) node."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            return {k.value: v for k, v in zip(node.value.keys, node.value.values)}
    return {}


def keyword_values(tree: ast.Module, name: str) -> list[ast.expr]:
    return [kw.value for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords
            if kw.arg == name]


def test_there_are_launch_files_for_one_camera_several_cameras_and_replay():
    assert {p.name for p in LAUNCH_FILES} >= {"segmentation.launch.py", "multi_camera.launch.py",
                                              "replay.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_structure_and_references(path):
    tree = parse(path)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    for const in (n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)):
        if const.endswith(".yaml"):
            assert (LAUNCH_DIR.parent / "config" / const).is_file(), f"{path.name} references missing config/{const}"
        if const.endswith(".launch.py"):
            assert (LAUNCH_DIR / const).is_file(), f"{path.name} includes missing launch/{const}"
    args = arguments(tree)
    for value in keyword_values(tree, "launch_arguments"):  # forwarded to segmentation.launch.py
        forwarded = {c.value for n in ast.walk(value) if isinstance(n, (ast.Dict, ast.Tuple))
                     for c in (n.keys if isinstance(n, ast.Dict) else n.elts)
                     if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        if any(isinstance(n, ast.Name) and n.id == "ARGUMENTS" for n in ast.walk(value)):
            forwarded |= set(args)
        target = set(arguments(parse(LAUNCH_DIR / "segmentation.launch.py")))
        assert forwarded and forwarded <= target, f"{path.name} forwards undeclared {forwarded - target}"
    for value in keyword_values(tree, "parameters"):
        for mapping in (n for n in ast.walk(value) if isinstance(n, ast.Dict)):
            keys = {k.value for k in mapping.keys}
            assert keys <= set(DECLARED), f"{path.name} sets parameters the node does not declare: " \
                                          f"{keys - set(DECLARED)}"


def test_argument_defaults_agree_with_the_node_defaults():
    args = arguments(parse(LAUNCH_DIR / "segmentation.launch.py"))
    checked = 0
    for name, value in args.items():
        default = value.elts[0]
        if name in DECLARED and name != "class_table" and isinstance(default, ast.Constant):
            assert yaml.safe_load(default.value or "''") == DECLARED[name], name
            checked += 1
    assert checked >= 7


def test_config_holds_the_class_table_without_duplicating_it(repo_root):
    table = repo_root / "config" / "cityscapes_classes.yaml"
    assert table.is_symlink() and table.resolve() == repo_root / "vltseg_core" / "configs" / "classes" / \
        "cityscapes.yaml"


def test_replay_plays_the_bag_once_the_node_is_active():
    """A fixed timer raced the model load; the bag must start from the node's transition to 'active'."""
    tree = parse(LAUNCH_DIR / "replay.launch.py")
    handlers = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
                "OnStateTransition" and any(kw.arg == "goal_state" and getattr(kw.value, "value", None) == "active"
                                            for kw in n.keywords)]
    assert len(handlers) == 1, "replay.launch.py should start playback from OnStateTransition(goal_state='active')"
    plays = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "ExecuteProcess"]
    inside = [n for n in ast.walk(handlers[0]) if n in plays]
    assert plays and inside == plays, "every process of replay.launch.py must start from the 'active' handler"
