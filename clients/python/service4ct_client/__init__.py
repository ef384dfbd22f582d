"""A small typed client of the Service4CT API (``clients/README.md``)."""

from service4ct_client import types
from service4ct_client.client import FINAL_STATES, Service4CTClient, Service4CTError
from service4ct_client.types import *  # noqa: F403 - the TypedDicts named after the OpenAPI components

__all__ = ["FINAL_STATES", "Service4CTClient", "Service4CTError", *types.__all__]  # noqa: PLE0604
