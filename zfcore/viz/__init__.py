"""Pictures: figure helpers (``plotting``), the report's page rules (``page``), numbers
one chapter records for another (``findings``) and the JupyterLab explorer (``widgets``). matplotlib and
ipywidgets are imported inside the functions that draw, never by ``import zfcore``."""
from zfcore.viz import findings, page, plotting, widgets

__all__ = ["findings", "page", "plotting", "widgets"]
