"""Talking to a Kubeflow Pipelines API server: a quick probe first, then one-line errors.

``kfp.Client`` retries its health check five times with five-second sleeps, logs a traceback
for each try and, given a host that answers HTML (a login page, the UI's address), returns
objects whose fields are None or raises ``TypeError``. :func:`connect` first sends one GET to
``/apis/v2beta1/healthz`` with a short timeout and turns every failure into an
:class:`KfpError` naming the host, the HTTP status and what to check; the client it returns
translates API errors of each call the same way.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from activedet.errors import ActivedetError

log = logging.getLogger(__name__)

HEALTHZ = "/apis/v2beta1/healthz"
#: where kfp.Client reads a projected service-account token (audience pipelines.kubeflow.org)
TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
PROBE_TIMEOUT_S = 5.0


class KfpError(ActivedetError):
    """The KFP API server could not be reached or refused a request."""


def _hint(status: int) -> str:
    if status in (401, 403):
        return ("check the credentials: the service-account token (KF_PIPELINES_SA_TOKEN_PATH), its RoleBinding "
                "in the namespace (--namespace), or the auth proxy in front of KFP")
    if status == 404:
        return "check --host: it must be the KFP API server (e.g. http://ml-pipeline.kubeflow:8888), not the UI or a path below it"
    if status >= 500:
        return "check the ml-pipeline API server (kubectl -n kubeflow get pods; its logs) and its database"
    return "check --host and the request"


def _token() -> str | None:
    path = Path(os.environ.get(TOKEN_ENV) or DEFAULT_TOKEN_PATH)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _unreachable(host: str, reason: object) -> KfpError:
    return KfpError(f"cannot reach Kubeflow Pipelines at {host}: {str(reason).splitlines()[0] if str(reason) else type(reason).__name__}; "
                    "check --host and that the ml-pipeline API server is running")


def probe(host: str, *, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """One GET of the health endpoint; returns its JSON or raises :class:`KfpError` (one line)."""
    url = host.rstrip("/") + HEALTHZ
    headers = {"Accept": "application/json"}
    token = _token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            body, ctype, status = resp.read(1 << 16), resp.headers.get("Content-Type", ""), resp.status
    except urllib.error.HTTPError as exc:
        raise KfpError(f"Kubeflow Pipelines at {host} answered HTTP {exc.code} ({exc.reason}) to GET {HEALTHZ}: {_hint(exc.code)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, DNS, timeout, malformed URL
        raise _unreachable(host, getattr(exc, "reason", exc)) from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        kind = ctype.split(";")[0] or "a body that is not JSON"
        raise KfpError(f"{host} answered HTTP {status} with {kind} to GET {HEALTHZ}, not the KFP API (a login page or the UI?): "
                       "check --host points at the API server (e.g. http://ml-pipeline.kubeflow:8888) and the credentials")
    return data


class GuardedClient:
    """A :class:`kfp.Client` whose method calls raise :class:`KfpError` (one line) on any API failure."""

    def __init__(self, client: Any, host: str):
        self._client, self._host = client, host

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            return guard(self._host, name, attr, *args, **kwargs)

        return call


def guard(where: str, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with KFP API failures turned into one-line :class:`KfpError`s (``where``: the host)."""
    import kfp_server_api
    import urllib3

    inspect.signature(fn).bind(*args, **kwargs)  # a wrong call is our bug: let its TypeError through as it is
    quiet = _QuietKfpRoot()
    logging.getLogger().addFilter(quiet)
    try:
        return fn(*args, **kwargs)
    except KfpError:
        raise
    except kfp_server_api.ApiException as exc:
        status = int(exc.status or 0)
        raise KfpError(f"Kubeflow Pipelines at {where} answered HTTP {status} ({exc.reason}) to {what}: {_hint(status)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unreachable(where, exc) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # an answer that is not the KFP API's JSON
        log.debug("KFP %s failed", what, exc_info=True)
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
        raise KfpError(f"{where} answered {what} with something that is not the KFP API ({detail}): "
                       "check --host points at the API server, not the UI or a login page") from None
    finally:
        logging.getLogger().removeFilter(quiet)


def connect(host: str, *, namespace: str | None = None) -> GuardedClient:
    """Probe ``host``, then a guarded :class:`kfp.Client` for it (credentials from KFP's environment)."""
    probe(host)
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "This client only works with ... v2.0.0-beta.2"
        client = guard(host, "connect", kfp.Client, host=host, namespace=namespace or "")
    _require_json(client, host)
    return GuardedClient(client, host)


def _require_json(client: Any, host: str) -> None:
    """Make every 2xx answer that is not JSON an error: the generated API client would otherwise
    turn an HTML page into empty objects (a run id of None, an empty list)."""
    rest = getattr(getattr(getattr(client, "_healthz_api", None), "api_client", None), "rest_client", None)
    if rest is None:  # another kfp version's layout: the result checks still apply
        return
    request = rest.request

    def checked(method, url, *args, **kwargs):
        resp = request(method, url, *args, **kwargs)
        ctype = resp.getheader("Content-Type") or ""
        if resp.data and "json" not in ctype:
            path = "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
            raise KfpError(f"{host} answered {method} {path} with HTTP {resp.status} {ctype.split(';')[0] or 'non-JSON'}, "
                           "not the KFP API (a login page or the UI?): check --host points at the API server")
        return resp

    rest.request = checked


class _QuietKfpRoot(logging.Filter):
    """kfp.Client logs progress ("Creating experiment ...") on the root logger: keep it at debug
    level so a failing command prints its one error line only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and f"{os.sep}kfp{os.sep}" in record.pathname and record.levelno <= logging.INFO:
            log.debug(record.getMessage())
            return False
        return True


def require(value: Any, host: str, what: str) -> Any:
    """``value`` unless it is empty: a KFP answer without the id we asked for is an error too."""
    if not value:
        raise KfpError(f"{host} answered {what} without an id: check --host points at the KFP API server")
    return value
