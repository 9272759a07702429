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
