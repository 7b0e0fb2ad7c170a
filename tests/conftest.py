"""Hypothesis explores new random examples on developers' machines; in CI (CI is set) it runs a
fixed, derandomized set so that a run's verdict depends only on the code."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
