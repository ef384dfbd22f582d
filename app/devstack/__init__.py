"""The dev stack: embedded PostgreSQL, Redis and SeaweedFS S3 as supervised child processes.

``supervisor`` runs one child process (lock, log, readiness, restart on the same port, stop);
``processes`` holds its operating-system helpers (ports, parent-death signal, leftovers);
``postgres``, ``redis`` and ``s3`` say what each service runs and how it answers (PostgreSQL
as an unprivileged system user when the owner is root: ``system_user``); ``stack`` starts the
three together; ``serve`` is ``service4ct serve`` (stack, migrations, API and worker).
"""

from app.devstack.postgres import EmbeddedPostgres
from app.devstack.processes import EmbeddedError, free_ports, port_is_free
from app.devstack.redis import EmbeddedRedis
from app.devstack.s3 import EmbeddedS3, find_weed
from app.devstack.stack import EmbeddedStack

__all__ = [
    "EmbeddedError",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedS3",
    "EmbeddedStack",
    "find_weed",
    "free_ports",
    "port_is_free",
]
