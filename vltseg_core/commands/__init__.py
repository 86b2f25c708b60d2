"""Thin `vltseg` subcommands: argument parsing and calls into the library; no logic of their own."""
