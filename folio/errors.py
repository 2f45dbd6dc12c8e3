"""User-facing errors.

Anything a user can cause (a bad file, flag, config or checkpoint) raises
`FolioError` with one clear sentence. The CLI prints it as a single line and
exits non-zero; library users can catch it. Programming errors stay ordinary
exceptions so their tracebacks are not hidden.
"""

from __future__ import annotations


class FolioError(Exception):
    """An error the user can fix; its message is one line meant for them."""
