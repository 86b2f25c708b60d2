"""Shared test set-up: each test session gets its own ROS 2 domain, kept on this host, so concurrent runs
(and other ROS graphs on the machine) never cross-talk; torch uses few threads (2-core CI machines); and on a ROS 2
install one test module that cannot be imported fails or skips alone."""
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_ROOT = Path(os.environ.get("VLTSEG_CAMVID") or REPO_ROOT.parent / "shared" / "data" / "camvid").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid train/val frames ($VLTSEG_CAMVID, default ../shared/data/camvid beside the checkout)."""
    if not (CAMVID_ROOT / "train.txt").is_file():
        pytest.skip(f"real CamVid data not found at {CAMVID_ROOT}")
    return CAMVID_ROOT


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makemodule(module_path, parent):
    """launch_testing's pytest plugin (loaded wherever launch_testing is installed, e.g. `colcon test`) imports every
    test module to look for a launch test, so one module-level skip or failing optional import aborted collection
    of the whole folder. Such a module goes to pytest's own collector instead, which reports it for itself."""
    try:
        return (yield)
    except (Exception, pytest.skip.Exception):
        return pytest.Module.from_parent(parent, path=module_path)

