"""The feedback studio (issue 6): a multi-labeler web app that collects human preferences.

``store`` holds the data and the Python API, ``api`` the web app, ``io`` imports and exports, ``agreement``
and ``consensus`` the quality figures. Nothing here imports training code: trainers read exported files.
"""
