"""What the tests and the bench of transformers' server through Stitch share:
raw HTTP to a server on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def health(port: int) -> int:
    """/health's status code (0: nothing answers yet)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/health", timeout=5
        ) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def post(port: int, path: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    """POST ``body`` as JSON: the status code and the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
