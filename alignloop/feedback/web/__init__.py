"""The studio's web app, one router per resource (``pages``, ``users``, ``projects``, ``assignments``,
``judgments``, ``exports``) with typed dependencies (``deps``), request bodies (``schemas``) and response views
(``views``); ``alignloop.feedback.api.create_app`` assembles them. ``static/`` and ``templates/`` are the front end.
"""
