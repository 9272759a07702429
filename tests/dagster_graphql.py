"""One GraphQL request to a local `dagster dev` or `dagster-webserver`: the tests that drive the UI's API and
benchmarks/instance_postgres.py share it."""

from __future__ import annotations

import json
import urllib.request


class GraphQLError(RuntimeError):
    """The server answered with GraphQL errors (its words are the message)."""


def graphql(port: int, query: str, variables: dict | None = None, timeout_s: float = 120) -> dict:
    """The answer's `data`; GraphQL errors raise GraphQLError with the server's words, so a test fails on them
    (an unreachable server raises OSError, which a caller waiting for start-up catches)."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise GraphQLError(f"GraphQL errors: {answer['errors'][:2]}")
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
