"""The audit of the routes that read or delete a result, an explanation, a study or a job.

A route takes :data:`AuditDep` instead of ``Client``: the dependency carries the caller (client,
key, viewer token) and the request id, and :meth:`Auditor.record` appends the audit row on
the route's own connection (in the deletion's transaction for a DELETE).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.api.deps import Caller
from app.api.keys import Principal
from app.db import Conn
from app.repository.audit import AuditAction, AuditObject, record_audit

__all__ = ["AuditDep", "Auditor"]


@dataclass(frozen=True)
class Auditor:
    caller: Principal
    request_id: str | None

    @property
    def client(self) -> str:
        return self.caller.client

    def record(self, conn: Conn, action: AuditAction, obj: AuditObject, object_id: uuid.UUID) -> None:
        record_audit(
            conn,
            client=self.caller.client,
            key_hash=self.caller.key_hash,
            viewer=self.caller.viewer,
            action=action,
            obj=obj,
            object_id=object_id,
            request_id=self.request_id,
        )


async def get_auditor(request: Request, caller: Caller) -> Auditor:
    return Auditor(caller, getattr(request.state, "request_id", None))


AuditDep = Annotated[Auditor, Depends(get_auditor)]
