"""Upload a study ZIP to a running Service4CT, predict it and print the result (client of `make run`).

Usage: python scripts/demo_client.py STUDY.zip [--api http://127.0.0.1:8000] [--key KEY] [--explain gradcam]
The key defaults to the dev key that `service4ct serve` wrote to var/dev-api-key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--api", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default=None)
    ap.add_argument("--explain", default="gradcam")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    key = args.key or Path("var/dev-api-key").read_text().strip()
    with httpx.Client(base_url=args.api, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        with args.study.open("rb") as f:
            r = c.post("/v1/studies", content=f, headers={"Content-Type": "application/zip"})
        print("upload:", r.status_code, json.dumps(r.json()))
        if r.status_code >= 300:
            return 1
        r = c.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": args.explain})
        print("job:", r.status_code, json.dumps(r.json()))
        if r.status_code >= 300:
            return 1
        job = r.json()["job_id"]
        deadline = time.monotonic() + args.timeout
        while True:
            st = c.get(f"/v1/jobs/{job}").json()
            print(f"  {st['state']:<9} stage={st['stage']} progress={st['progress']:.2f} eta_s={st['eta_s']}")
            if st["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if st["state"] != "succeeded":
            print("job did not succeed:", json.dumps(st.get("error")))
            return 1
        print("result:", json.dumps(c.get(f"/v1/jobs/{job}/result").json(), indent=2))
        if args.explain != "none":
            ex = c.get(f"/v1/jobs/{job}/explanation").json()
            print("explanation stats:", json.dumps(ex.get("stats"), indent=2))
            for name, f in ex.get("files", {}).items():
                print(f"  {name}: {f['url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
