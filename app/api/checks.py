"""Checks of a job request that need the settings or the manifest: callback URL, explanation cost, duplicates.

- :func:`checked_callback_url`: the callback URL policy (:mod:`app.callbacks`), 422
  ``callback_url_invalid``.
- :func:`check_explain_cost`: the explanation parameters resolved for the model's input
  size and held against the budget (:func:`ml.explain.check_budget`, the same call the
  worker makes), 422 ``validation_error`` or ``explain_too_costly``.
- :func:`existing_explanation`: an explain request identical to an explanation already
  stored, or to an explain job still queued or running, gets that job back.
"""

from __future__ import annotations

import json
from typing import Any

from app.api.deps import Services
from app.callbacks import CallbackURLError, check_callback_url, policy_of
from app.db import Conn
from app.errors import ServiceError
from app.repository import Job, get_explanations, get_job
from app.repository.jobs import explain_jobs_of, lock_job
from ml.explain import BudgetError, check_budget, resolve_params

__all__ = ["check_explain_cost", "checked_callback_url", "existing_explanation"]


def checked_callback_url(services: Services, url: object | None) -> str | None:
    """The callback URL as stored, checked like the dispatcher will check it."""
    if url is None:
        return None
    try:
        check_callback_url(str(url), policy_of(services.settings), services.callback_resolver)
    except CallbackURLError as e:
        raise ServiceError("callback_url_invalid", str(e)) from None
    return str(url)


def _input_size(services: Services, model: str) -> tuple[int, int, int]:
    entry = services.manifest.entries.get(model)
    if entry is None:
        raise ServiceError("model_unavailable", f"model {model!r} is no longer in the manifest")
    d, h, w = entry.input_size
    return int(d), int(h), int(w)


def check_explain_cost(services: Services, model: str, method: str, params: dict[str, Any]) -> None:
    """Refuse what the worker would refuse for ``model``, or what exceeds the budget."""
    s = services.settings
    try:
        check_budget(
            method,
            params,
            _input_size(services, model),
            max_passes=s.explain_max_passes,
            max_bytes=s.explain_max_bytes,
        )
    except BudgetError as e:
        raise ServiceError("explain_too_costly", str(e)) from None
    except ValueError as e:
        raise ServiceError("validation_error", str(e)) from None


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def existing_explanation(
    conn: Conn, services: Services, parent: Job, method: str, params: dict[str, Any]
) -> Job | None:
    """The job that produced (or is producing) this explanation of ``parent``, if any.

    Parameters are compared resolved (defaults filled in), so ``{}`` and the defaults
    spelled out are the same request. Locks ``parent``'s row: two identical requests at
    once queue one job.
    """
    lock_job(conn, parent.id)
    size = _input_size(services, parent.model)
    wanted = resolve_params(method, params, size)
    for record in get_explanations(conn, parent.id):
        if record.method == method and _same(_resolved(method, record.params, size), wanted):
            return get_job(conn, record.produced_by) or parent
    for job in explain_jobs_of(conn, parent.id, method):
        if _same(_resolved(method, job.explain_params, size), wanted):
            return job
    return None


def _resolved(method: str, params: dict[str, Any], size: tuple[int, int, int]) -> dict[str, Any]:
    """Stored parameters resolved; as stored when they already are (occlusion's window lists)."""
    try:
        return resolve_params(method, params, size)
    except ValueError:
        return params
