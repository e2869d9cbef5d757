"""The status page's static files (index.html, app.js, style.css), served by ``observe/pages.py``."""
