"""The ``zfcore`` command line: ``main`` parses (``main``), the subcommands run (``commands``), and what
they share (model, inputs, output files) lives in ``common``. Nothing in the library imports it."""
from zfcore.cli.main import main

__all__ = ["main"]
