"""zfcore: the deconvnet of Zeiler & Fergus (ECCV 2014), from scratch in numpy."""
__version__ = "0.1.0"
