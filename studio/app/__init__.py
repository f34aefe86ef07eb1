"""The studio web app (Gradio): a thin layer over the ``studio`` API.

``server`` launches it; ``workspace``, ``db``, ``jobs``/``worker``, ``uploads``, ``datasets``,
``library``, ``mixing`` and ``progress`` hold the app's logic without any UI; ``ui`` holds
the tabs that call them.
"""
