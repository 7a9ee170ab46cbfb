"""The feedback studio: a multi-labeler web app that collects human preferences.

``models`` holds the tables and the database handle, ``queries`` the Python API (``store`` re-exports both
under the documented name), ``api`` and ``web/`` the web app, ``io`` imports and exports, ``assign`` who labels
what next, ``agreement``, ``consensus`` and ``stats`` the quality figures. Nothing here imports training code:
trainers read exported files.
"""
