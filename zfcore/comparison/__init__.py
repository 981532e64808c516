"""Optional: zfcore next to huybery/VisualizingCNN, for the comparison chapter and its benchmark.

``huybery``: a re-creation of that repository's pipeline in PyTorch, with its quirks as options;
``original``: runs the original code from a user's own clone; ``compare``: the measures and runs that
put them side by side. Needs torch (``pip install 'zfcore[notebooks]'``); nothing else in zfcore
imports this package.
"""
