"""Pictures: figure helpers (``plotting``), the report's page rules (``page``) and the JupyterLab explorer (``widgets``). matplotlib and
ipywidgets are imported inside the functions that draw, never by ``import zfcore``."""
from zfcore.viz import page, plotting, widgets

__all__ = ["page", "plotting", "widgets"]
