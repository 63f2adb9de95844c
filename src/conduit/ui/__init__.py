"""The dashboard: a static single-page app in `static/`, served at /ui by `conduit.api.routes.ui`."""
