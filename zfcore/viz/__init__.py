"""Pictures: figure helpers (``plotting``) and the JupyterLab explorer (``widgets``). matplotlib and
ipywidgets are imported inside the functions that draw, never by ``import zfcore``."""
from zfcore.viz import plotting, widgets

__all__ = ["plotting", "widgets"]
