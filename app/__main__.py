"""`python -m app`: serve on PORT with the configuration from the environment."""

from __future__ import annotations

import re
import sys


def main() -> None:
    # Imports stay inside: anyio worker processes re-run this module (as __mp_main__)
    # and should not pay for the web stack they never use.
    import trio
    from hypercorn.utils import LifespanFailureError

    from app.server import serve
    from app.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"imgjobs: configuration error: {exc}")
    try:
        trio.run(serve, settings)
    except* LifespanFailureError as failed:
        # The service could not start (a database or bucket it cannot use): say why, once.
        error: BaseException = failed
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        text = str(error)
        reason = re.fullmatch(r"Lifespan failure in startup\. '(.*)'", text, re.DOTALL)
        reason_text = " ".join((reason[1] if reason else text).split())  # one line
        sys.exit(f"imgjobs: cannot start: {reason_text}")


if __name__ == "__main__":
    main()
