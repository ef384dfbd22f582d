"""Schemathesis against the live OpenAPI schema: real API, PostgreSQL, Redis and S3, a real API key.

Every operation of ``/openapi.json`` gets generated requests, valid (positive) and
invalid (negative) ones; path ids are drawn from random UUIDs and from real
resources of the calling client (a study, jobs queued / succeeded with an
explanation / failed, studies to delete). Each answer must be no 5xx, carry a
documented status code and content type, and match the documented body schema.
The default suite runs about a hundred cases; the ``slow`` run well over a thousand
and adds a worker-produced result (a real prediction of a phantom study).
"""

from __future__ import annotations

import collections
import importlib
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
from conftest import LiveApi, wait_job  # type: ignore[import-not-found]
from hypothesis import strategies as st
from seeding import Seeded, create_job, heartbeat, seed_client, small_zip, upload  # type: ignore[import-not-found]

from ml.phantom import make_study

# schemathesis is imported inside this module's tests only (its pytest plugin is off: `-p no:schemathesis`):
# on import it patches Hypothesis globally (no pretty-printed falsifying examples, a larger buffer),
# which the `_hypothesis_restored` fixture undoes for the rest of the session.
_PATCHED = (
    ("hypothesis.core", "RepresentationPrinter"),
    ("hypothesis.core", "BUFFER_SIZE"),
    ("hypothesis.internal.conjecture.engine", "BUFFER_SIZE"),
    ("hypothesis.strategies._internal.collections", "BUFFER_SIZE"),
    ("hypothesis.strategies._internal.core", "is_first_param_referenced_in_function"),
    ("hypothesis.internal.entropy", "register_random"),
)


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_restored() -> Iterator[None]:
    saved = {(mod, name): getattr(importlib.import_module(mod), name) for mod, name in _PATCHED}
    yield
    for (mod, name), value in saved.items():
        setattr(importlib.import_module(mod), name, value)
    if "schemathesis" in sys.modules:  # a later user of schemathesis patches again
        from schemathesis.generation import hypothesis as sch_hypothesis

        sch_hypothesis.setup._is_patched = False  # type: ignore[attr-defined]


def _checks() -> list[Any]:
    """No 5xx, invalid input refused, status / content type / body / headers as documented."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        not_a_server_error,
        negative_data_rejection,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]


#: operations that take a resource id in the JSON body rather than the path
BODY_IDS = {"POST /v1/jobs": ("study_id",)}


class Fuzzer:
    """Runs generated cases of every operation against a live API and tallies the answers."""

    def __init__(self, api: LiveApi, key: str, ids: dict[str, list[str]], deletable: list[str]) -> None:
        import schemathesis

        self.sch = schemathesis
        self.checks = _checks()
        self.api = api
        self.schema = schemathesis.openapi.from_url(f"{api.base}/openapi.json", timeout=60)
        # explicit credentials: the declared bearer scheme is then not generated (nor negated)
        self.auth = {"Authorization": f"Bearer {key}"}
        self.schema.config.update(headers=self.auth)
        self.session = requests.Session()
        self.ids, self.deletable = ids, deletable
        self.statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)

    def close(self) -> None:
        self.session.close()

    def operations(self) -> list[Any]:
        from schemathesis.core.result import Ok

        ops = []
        for result in self.schema.get_all_operations():
            assert isinstance(result, Ok), result  # the schema itself is valid
            ops.append(result.ok())
        return ops

    def random_cases(self, op: Any) -> st.SearchStrategy[Any]:
        """Positive and negative cases with generated ids (unknown resources)."""
        options = [op.as_strategy(self.sch.GenerationMode.POSITIVE)]
        if _has_inputs(op):
            options.append(op.as_strategy(self.sch.GenerationMode.NEGATIVE))
        return st.one_of(options)

    def real_cases(self, op: Any) -> list[st.SearchStrategy[Any]]:
        """Per real resource id of ``op``: positive and documented-example cases aimed at it."""
        names = [p.name for p in op.path_parameters] or [n for n in BODY_IDS.get(op.label, ())]
        if not names:
            return []
        (name,) = names
        pool = self.deletable if op.method.upper() == "DELETE" else self.ids[name]
        bases = st.one_of(
            op.as_strategy(self.sch.GenerationMode.POSITIVE),
            *self.schema.get_strategies_from_examples(op, headers=self.auth),
        )
        extra = {n: st.sampled_from(p) for n, p in self.ids.items() if n != name}
        return [
            st.builds(_on_real, bases, st.fixed_dictionaries({name: st.just(value), **extra}))
            for value in pool
        ]

    def fuzz(self, op: Any, random_examples: int, real_examples: int, derandomize: bool) -> int:
        """Run generated cases of ``op``: random ids, then each real id; returns how many were sent."""
        runs = [(self.random_cases(op), random_examples)] + [(s, real_examples) for s in self.real_cases(op)]
        return sum(self._run(op, strategy, n, derandomize) for strategy, n in runs)

    def _run(self, op: Any, strategy: st.SearchStrategy[Any], max_examples: int, derandomize: bool) -> int:
        sent = 0

        @hypothesis.settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=derandomize,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
        )
        @hypothesis.given(case=strategy)
        def run(case: Any) -> None:
            nonlocal sent
            response = case.call(base_url=self.api.base, session=self.session, timeout=60)
            sent += 1
            self.statuses[op.label][response.status_code] += 1
            case.validate_response(response, checks=self.checks)

        run()
        return sent


def _has_inputs(op: Any) -> bool:
    return bool(list(op.iter_parameters())) or (op.body is not None and len(op.body) > 0)


def _on_real(case: Any, ids: dict[str, str]) -> Any:
    """``case`` aimed at real resources: the named path, query and JSON body fields replaced."""
    for name, value in ids.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value
        if case.query and name in case.query:
            case.query[name] = value
        if isinstance(case.body, dict) and name in case.body:
            case.body[name] = value
    return case


@pytest.fixture(scope="module")
def seeded(api: LiveApi) -> Seeded:
    return seed_client(api, "fuzz")


#: operations that must have answered 2xx at least once in a full run (real resources were reached)
REACHED = (
    "GET /v1/studies/{study_id}",
    "GET /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/result",
    "GET /v1/jobs/{job_id}/explanation",
    "POST /v1/jobs",
    "POST /v1/studies/{study_id}/predict",
    "POST /v1/jobs/{job_id}/explain",
    "DELETE /v1/studies/{study_id}",
    "GET /v1/models",
)


def _fuzz(
    api: LiveApi,
    seeded: Seeded,
    extra_jobs: list[str],
    *,
    n_deletable: int,
    random_examples: int,
    real_examples: int,
    derandomize: bool,
    min_cases: int,
    only: str = "/",
    reached: tuple[str, ...] = REACHED,
) -> Fuzzer:
    """Fuzz every operation whose path starts with ``only``: ``min_cases`` cases, ``reached`` 2xx, no 5xx."""
    with api.client(seeded.key) as c:
        deletable = [upload(c, small_zip(f"del-{i}-{uuid.uuid4().hex[:6]}")) for i in range(n_deletable)]
    ids = {
        "study_id": [seeded.study_id],
        "job_id": [*seeded.jobs.values(), *extra_jobs],
        "method": ["gradcam", "occlusion"],  # ?method= of GET .../explanation: the seeded one, and another
    }
    fz = Fuzzer(api, seeded.key, ids, deletable)
    total = 0
    try:
        for op in (o for o in fz.operations() if o.path.startswith(only)):
            heartbeat(api)  # /readyz answers 200 (its 503 needs a missing dependency)
            total += fz.fuzz(op, random_examples, real_examples, derandomize)
    finally:
        fz.close()
    assert total >= min_cases, dict(fz.statuses)
    _assert_exercised(fz, reached)
    return fz


def _assert_exercised(fz: Fuzzer, reached: tuple[str, ...]) -> None:
    """The run reached real resources: 2xx answers on the read routes, not only 4xx."""
    print(f"schemathesis: {sum(sum(c.values()) for c in fz.statuses.values())} cases")
    for label, counts in sorted(fz.statuses.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    ok = {label for label, counts in fz.statuses.items() if any(200 <= s < 300 for s in counts)}
    for label in reached:
        assert label in ok, f"{label} never answered 2xx: {dict(fz.statuses.get(label, {}))}"
    assert not any(s >= 500 for counts in fz.statuses.values() for s in counts)


def test_schema_fuzz_small(api: LiveApi, seeded: Seeded) -> None:
    """About a hundred generated cases over every operation (default suite)."""
    _fuzz(api, seeded, [], n_deletable=1, random_examples=8, real_examples=4, derandomize=True, min_cases=90)


def test_schema_documents_auth_and_error_bodies(api: LiveApi) -> None:
    """Every /v1 operation declares the bearer scheme and documents 401 and 422 with the error body."""
    spec = requests.get(f"{api.base}/openapi.json", timeout=30).json()
    schemes = spec["components"]["securitySchemes"]
    (scheme_name,) = [n for n, s in schemes.items() if (s["type"], s.get("scheme")) == ("http", "bearer")]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not path.startswith("/v1/"):
                assert "security" not in op, f"{method} {path} is open by design"
                continue
            assert {scheme_name: []} in op.get("security", []), f"{method} {path}"
            for status in ("401", "422"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, status)


@pytest.mark.slow
def test_schema_fuzz_thousand_cases(
    api: LiveApi, seeded: Seeded, worker: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """≥ 1000 generated cases, including a job a real worker predicted and explained."""
    study_zip = tmp_path_factory.mktemp("fuzz") / "study.zip"
    make_study(study_zip, seed=21, label=1)
    with api.client(seeded.key) as c:
        real_job = create_job(c, upload(c, study_zip.read_bytes()))
        assert wait_job(c, real_job, timeout=600)["state"] == "succeeded"
    # the worker takes no more work: generated explain requests (occlusion, 256 IG steps) stay queued
    worker.stop_event.set()
    fz = _fuzz(
        api,
        seeded,
        [real_job],
        n_deletable=5,
        random_examples=100,
        real_examples=15,
        derandomize=False,
        min_cases=1000,
    )
    assert fz.statuses["GET /v1/jobs/{job_id}/result"][200] > 15  # the seeded and the real result
    # again on the jobs once their study is deleted: they keep status, result and explanation
    with api.client(seeded.key) as c:
        assert c.delete(f"/v1/studies/{seeded.study_id}").status_code == 204
    after = _fuzz(
        api,
        seeded,
        [],
        n_deletable=0,
        random_examples=10,
        real_examples=20,
        derandomize=False,
        min_cases=100,
        only="/v1/jobs/{job_id}",
        reached=(
            "GET /v1/jobs/{job_id}",
            "GET /v1/jobs/{job_id}/result",
            "GET /v1/jobs/{job_id}/explanation",
        ),
    )
    assert after.statuses["POST /v1/jobs/{job_id}/explain"][404] > 0  # study_not_found
    assert not after.statuses["POST /v1/jobs/{job_id}/explain"][202]
