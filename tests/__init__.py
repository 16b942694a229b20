"""Shoal's tests (a package, so that `tests.<helper>` is ours and not a `tests` some wheel installs)."""
