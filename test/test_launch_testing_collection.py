"""On a ROS 2 install pytest runs with launch_testing's plugin (`colcon test`), which imports every test module of
the folder: with the optional extras missing (train, test, export), collecting test/ must give exactly what plain
pytest gives, each module that cannot run skipped or reported alone, not the whole folder lost. Runs where
launch_testing is installed (the ROS 2 overlay CI, `./run.sh test-ros`)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# top-level modules of the optional extras a ROS 2 install may well not have (setup.py)
OPTIONAL = ("scipy", "tensorboard", "cityscapesscripts", "consisid_eva_clip", "open_clip", "onnxscript",
            "onnxconverter_common")
BLOCKER = f'''import sys
from importlib.abc import MetaPathFinder

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Missing())
'''


def collect(tmp_path: Path, *plugin_args: str) -> tuple[set[str], set[str], str]:
    """(collected test ids, files with a collection error, output) of `pytest --collect-only test`."""
    (tmp_path / "optional_extras_missing.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "optional_extras_missing", *plugin_args,
                           "--collect-only", "-q", "--continue-on-collection-errors", "test"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    ids = {line for line in lines if "::" in line}
    errors = {line.split()[1] for line in lines if line.startswith("ERROR ")}
    return ids, errors, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_collection_with_launch_testing_and_extras_missing_equals_plain_pytest(tmp_path):
    if importlib.util.find_spec("launch_testing") is None:
        pytest.skip("launch_testing not installed (a ROS 2 install; the overlay CI runs this)")
    plain_ids, plain_errors, plain_out = collect(tmp_path, "-p", "no:launch_testing", "-p", "no:launch_ros")
    ids, errors, out = collect(tmp_path)
    assert plain_ids, f"plain pytest collected nothing:\n{plain_out}"
    assert errors == plain_errors, f"collection errors under launch_testing:\n{out}"

    def without_launch_tests(found: set[str]) -> set[str]:  # collected as one launch test each by the plugin
        return {i for i in found if "_launch.py::" not in i}

    assert without_launch_tests(ids) == without_launch_tests(plain_ids), f"a different set:\n{out}"
    for launch_file in ("test_node_launch.py", "test_multi_camera_launch.py"):
        assert any(i.startswith(f"test/{launch_file}::") for i in ids), f"{launch_file} not collected:\n{out}"
