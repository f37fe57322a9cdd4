"""Shared test setup: page and callback errors propagate (``MDCM_RAISE=1``, see
:func:`mdcm_app.ui.guard`), so an AppTest's ``at.exception`` shows an error raised inside a page
instead of the friendly message the app shows its users."""

import os

os.environ.setdefault("MDCM_RAISE", "1")
