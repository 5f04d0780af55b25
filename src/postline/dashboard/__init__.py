"""The web dashboard, served by the API's own process (``serve`` and ``api``).

Pages are rendered on the server (Jinja2) and made live with htmx, whose file ships in
``static/vendor``. Every page reads and changes data through the API's own route
functions and views (``postline.api``), as the signed-in key: the dashboard sees what
that key sees over HTTP, and holds no second copy of the logic.
"""
