"""The Hub client's network: a finite timeout on every request, and network failures told apart from the rest.

huggingface_hub's default HTTP client has no timeout at all, so a server that accepts a connection and never answers
hangs a push, a download or a publish forever. bakesteer installs a client factory whose clients time out after
``BAKESTEER_HUB_TIMEOUT`` seconds (default 60) of waiting to connect, to send or to receive.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
from typing import Any

from bakesteer.errors import HubError, OptionError

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "BAKESTEER_HUB_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
_installed: float | None = None


def hub_timeout() -> float:
    """Seconds a Hub request may wait (``BAKESTEER_HUB_TIMEOUT``, default 60).

    Raises:
        OptionError: the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise OptionError(TIMEOUT_ENV, raw, reason="must be a positive number of seconds", hint="e.g. 60")
    return value


def _http_module() -> Any:
    """The HTTP client library huggingface_hub uses (``httpx2`` in 2.x, ``httpx`` in 1.x)."""
    for name in ("httpx2", "httpx"):
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    raise ImportError("huggingface_hub's HTTP client (httpx) is not installed")


def ensure_timeout() -> None:
    """Make every later Hub request time out after :func:`hub_timeout` seconds (idempotent; re-installed when the
    variable changes)."""
    global _installed
    timeout = hub_timeout()
    if _installed == timeout:
        return
    import huggingface_hub
    from huggingface_hub.utils import _http as hub_http  # the library's own factory: its request hooks are kept

    http = _http_module()
    base = getattr(hub_http, "default_client_factory", None)

    def enforce(request: Any) -> None:
        # the client's default does not cover calls that pass timeout=None themselves (model_info does): cap every
        # request's own timeouts, None (wait forever) included
        own = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            key: timeout if own.get(key) is None else min(float(own[key]), timeout)
            for key in ("connect", "read", "write", "pool")
        }

    def factory() -> Any:
        client = base() if base is not None else http.Client(follow_redirects=True)
        client.timeout = http.Timeout(timeout)
        hooks = dict(client.event_hooks)
        hooks["request"] = [*hooks.get("request", []), enforce]
        client.event_hooks = hooks
        return client

    huggingface_hub.set_client_factory(factory)
    _installed = timeout
    logger.debug("Hub requests time out after %g s", timeout)


def _raised_by_http_client(err: BaseException) -> bool:
    """Whether ``err`` was raised inside the HTTP client library. When one upload thread's connection error makes
    huggingface_hub close its shared client, a parallel upload fails with a bare ``RuntimeError`` ("the client has
    been closed") from httpx: a network failure all the same."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return str(module).split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors plus the socket's own (a local file error is not one of them)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        if importlib.util.find_spec(name) is not None:
            errors.append(importlib.import_module(name).HTTPError)
    return tuple(errors)


def http_status(err: BaseException) -> int | None:
    """The HTTP status of an answer the server did give, anywhere in ``err``'s cause chain (``HfHubHTTPError``,
    ``httpx.HTTPStatusError``), else ``None``: a 404 is an answer, not a network failure."""
    cause: BaseException | None = err
    while cause is not None:
        status = status_of(cause)
        if status is not None:
            return status
        cause = cause.__cause__ or cause.__context__
    return None


def status_of(err: BaseException) -> int | None:
    """The HTTP status ``err`` itself carries (its ``response.status_code``), else ``None``."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def network_cause(err: BaseException) -> BaseException | None:
    """The transport failure in ``err``'s cause chain (the client wraps some in ``RuntimeError``), else ``None``; an
    HTTP answer (see :func:`http_status`) is not one."""
    if http_status(err) is not None:
        return None
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, _transport_errors()) or _raised_by_http_client(cause):
            return cause
        cause = cause.__cause__
    return None


def network_error(subject: str, cause: BaseException, *, action: str) -> HubError:
    """One line for a transport failure: what failed, the endpoint it tried, and what to do."""
    from huggingface_hub import constants

    kind = type(cause).__name__
    waited = "timed out" if "timeout" in kind.lower() else "failed"
    return HubError(
        subject,
        None,
        f"network error reaching {constants.ENDPOINT} ({kind}: the request {waited})",
        f"check the connection and HF_ENDPOINT, or raise {TIMEOUT_ENV} (now {hub_timeout():g} s), and rerun",
        action=action,
    )
