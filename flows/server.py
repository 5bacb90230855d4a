"""Is a Prefect server answering at PREFECT_API_URL? A clear message when it is not."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

DEFAULT_API_URL = "http://127.0.0.1:4200/api"

HOW_TO_START = (
    "Start a local server with `scripts/prefect_server.sh` (or `PREFECT_SERVER_ANALYTICS_ENABLED=false "
    "prefect server start --host 127.0.0.1`) and set PREFECT_API_URL=" + DEFAULT_API_URL + "; "
    "or run everything in one go with `scripts/main.sh`."
)


class PrefectServerUnreachable(RuntimeError):
    """No Prefect API answers where PREFECT_API_URL points."""


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active Prefect profile."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    try:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or None
    except Exception:  # pragma: no cover - prefect settings unreadable
        return None


def check_api(url: str | None = None, timeout: float = 5.0) -> str:
    """Return the API URL if `<url>/health` answers; else raise PrefectServerUnreachable."""
    url = url or configured_api_url()
    if not url:
        raise PrefectServerUnreachable(
            "PREFECT_API_URL is not set, so a deployment has no server to register with. " + HOW_TO_START
        )
    health = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            if response.status == 200:
                return url
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise PrefectServerUnreachable(
        f"no Prefect server answers at PREFECT_API_URL={url} ({health}: {problem}). " + HOW_TO_START
    )
