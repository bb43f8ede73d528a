"""`python -m app`: serve on PORT with the configuration from the environment."""

from __future__ import annotations

import sys


def main() -> None:
    # Imports stay inside: anyio worker processes re-run this module (as __mp_main__)
    # and should not pay for the web stack they never use.
    import trio

    from app.server import serve
    from app.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"imgjobs: configuration error: {exc}")
    trio.run(serve, settings)


if __name__ == "__main__":
    main()
