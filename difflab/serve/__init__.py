"""``difflab serve``: a local web page for sampling trained runs.

``runs``     which run folders there are and what kind of model each holds (no web framework).
``request``  the page's form values -> a checked sampling request (and its ``difflab sample`` command).
``jobs``     a request run in a worker thread that streams x_t / predicted x_0, can be cancelled and
             writes the grid and the GIF.
``page``     the page itself, on gradio (the ``ui`` extra: ``pip install 'difflab[ui]'``); only this
             module imports gradio, and nothing in difflab imports it except ``difflab serve``.

The page samples through :func:`difflab.generate.draw`, the code ``difflab sample`` runs, so the
same run and settings give the same pixels on the page and on the command line.
"""
