"""The calling client's default webhook URL and event selection (docs/api.md, Webhooks)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.checks import checked_callback_url
from app.api.deps import Client, ServicesDep
from app.api.responses import error_responses
from app.errors import ServiceError
from app.repository.events import WebhookConfig, get_webhook_config, set_webhook_config
from app.schemas_events import WebhookSettings, WebhookSettingsIn

router = APIRouter(prefix="/v1", tags=["webhooks"])


def _view(config: WebhookConfig | None) -> dict[str, Any]:
    if config is None:  # the key's client row is gone (keys reference it: not expected)
        raise ServiceError("unauthorized")
    return WebhookSettings(
        url=config.url,
        events=list(config.events),
        default_events=not config.selected,
        secret_rotation_until=config.previous_until,
    ).model_dump(mode="json")


@router.get(
    "/webhook",
    response_model=WebhookSettings,
    summary="The calling client's default webhook URL and event selection",
    responses=error_responses("unauthorized"),
)
def read_webhook(services: ServicesDep, client: Client) -> Any:
    with services.db.conn() as conn:
        return _view(get_webhook_config(conn, client))


@router.put(
    "/webhook",
    response_model=WebhookSettings,
    summary="Set the default webhook URL and the events delivered",
    responses=error_responses("unauthorized", "callback_url_invalid"),
)
def put_webhook(req: WebhookSettingsIn, services: ServicesDep, client: Client) -> Any:
    url = checked_callback_url(services, req.url)
    with services.db.tx() as conn:
        return _view(set_webhook_config(conn, client, url, req.events))
