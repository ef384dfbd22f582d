"""Upload a study ZIP to a running Service4CT, predict it and print the result (client of `make run`).

Usage: python scripts/demo_client.py STUDY.zip [--api http://127.0.0.1:8000] [--key KEY] [--explain gradcam]
The key defaults to the dev key that `service4ct serve` wrote to var/dev-api-key.
Uses the typed Python client (clients/python, installed by `make venv`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "clients" / "python"))  # a bare checkout

from service4ct_client import JobStatus, Service4CTClient, Service4CTError


def _progress(st: JobStatus) -> None:
    print(f"  {st['state']:<9} stage={st['stage']} progress={st['progress']:.2f} eta_s={st['eta_s']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--api", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default=None)
    ap.add_argument("--explain", default="gradcam")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    key = args.key or Path("var/dev-api-key").read_text().strip()
    with Service4CTClient(args.api, key, timeout=120) as c:
        try:
            study = c.upload_study(args.study)
            print("upload:", json.dumps(study))
            job = c.predict(study["study_id"], explain=args.explain)
            print("job:", json.dumps(job))
            st = c.wait_for_job(
                job["job_id"], initial_delay=1.0, max_delay=1.0, timeout=args.timeout, on_status=_progress
            )
        except Service4CTError as e:
            print(f"error: {e.code} (HTTP {e.status}): {e.detail}")
            return 1
        if st["state"] != "succeeded":
            print("job did not succeed:", json.dumps(st.get("error")))
            return 1
        print("result:", json.dumps(c.result(job["job_id"]), indent=2))
        if args.explain != "none":
            ex = c.explanation(job["job_id"])
            print("explanation stats:", json.dumps(ex["stats"], indent=2))
            for name, f in ex["files"].items():
                print(f"  {name}: {f['url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
