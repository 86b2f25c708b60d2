import numpy as np
import pytest

from vltseg_core.classes import load_class_table
from vltseg_core.errors import VLTSegError


def test_cityscapes_table_matches_official_labels():
    from cityscapesscripts.helpers.labels import labels

    official = sorted((l for l in labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
    table = load_class_table("cityscapes")
    assert table.names == tuple(l.name for l in official)
    assert table.colors.tolist() == [list(l.color) for l in official]
    assert table.ignore_index == 255


def test_colorize_maps_ignore_to_black():
    table = load_class_table()
    rgb = table.colorize(np.array([[0, 255], [13, 18]], np.uint8))
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [0, 0, 0]
    assert rgb[1, 0].tolist() == [0, 0, 142]


def test_palette_is_built_once_and_read_only():
    """The node colours every frame with the table's one palette: nobody can change it for the others."""
    table = load_class_table("cityscapes")
    assert table.palette() is table.palette()
    assert np.array_equal(table.palette()[:19], table.colors) and not table.palette()[19:].any()
    with pytest.raises(ValueError):
        table.palette()[0] = 1


def test_unknown_table_is_one_clear_error():
    with pytest.raises(VLTSegError, match="not found"):
        load_class_table("no-such-table")
