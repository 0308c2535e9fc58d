"""What gunicorn serves in a fault run: every function mounted by path, as the dev server does.

gunicorn --workers 2 --threads 4 tests.faults.wsgi:app
"""

from shared.dev.server import build_app

app = build_app()
