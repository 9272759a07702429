"""One GraphQL request to a test's own `dagster dev`: the tests that drive the UI's API share it."""

from __future__ import annotations

import json
import urllib.request


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """The answer's `data`; a GraphQL error fails the test with the server's words."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


RUN_FAILURES = """query($id: ID!) { runOrError(runId: $id) { ... on Run {
    tags { key value } eventConnection { events { __typename
        ... on ExecutionStepFailureEvent { stepKey error { message } }
        ... on RunFailureEvent { message } } } } } }"""


def failed_runs(port: int, runs: list[dict]) -> list[dict]:
    """For each failed or canceled run of `runs` (each with runId and status): its run key and why it failed,
    so an assertion on them says what went wrong rather than only that something did."""
    described = []
    for run in runs:
        if run["status"] not in ("FAILURE", "CANCELED"):
            continue
        found = graphql(port, RUN_FAILURES, {"id": run["runId"]})["runOrError"]
        reasons = [f"{e.get('stepKey') or 'run'}: {(e.get('error') or {}).get('message') or e.get('message')}"
                   for e in found["eventConnection"]["events"]
                   if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")]
        described.append({"run": run["runId"], "status": run["status"],
                          "run_key": next((t["value"] for t in found["tags"] if t["key"] == "dagster/run_key"), None),
                          "reasons": reasons})
    return described
