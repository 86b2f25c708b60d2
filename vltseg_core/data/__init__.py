"""Datasets in their native layouts, their label maps (YAML) and the training transforms."""
