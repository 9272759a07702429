"""Re-rank a finding query's hits with that finding's linear probe (`medvec eval --probes`).

The text search finds a deep pool of candidates (the filters apply as usual); the probe, fitted on
the train split's labels, orders them; the best k are returned with `probe_score`, the probe's
probability. Only a query that names a finding (its name or one of its prompts) can be re-ranked.
"""

from __future__ import annotations

import numpy as np

from medvec.evaluation.probes import load_probes, probe_logits, probe_prompts
from medvec.search.results import MAX_K, Filters, SearchInputError, SearchResult, check_k, normalize_query_text

RERANK_MODES = ("probe",)
POOL_FACTOR, POOL_MIN = 5, 100  # candidates re-ranked: max(5 k, 100), at most MAX_K


def finding_of_query(text: str, prompts_by_finding) -> str | None:
    """The finding a query names: its name or one of its prompts, case and punctuation ignored."""
    key = normalize_query_text(text)
    for finding, prompts in prompts_by_finding.items():
        if key in {normalize_query_text(finding), *(normalize_query_text(p) for p in prompts)}:
            return finding
    return None


def search_text_reranked(search, text: str, k: int = 10, filters: Filters = Filters()) -> SearchResult:
    """`search.search_text`, its candidate pool re-ordered by the named finding's probe."""
    k = check_k(k)
    probes = load_probes(search.home, search.table_name)
    known = probe_prompts(probes)
    finding = finding_of_query(text, known)
    if finding is None:
        raise SearchInputError("rerank=probe needs a query that names a finding, one of: " + ", ".join(known))
    if probes is None or finding not in probes["probes"]:
        raise SearchInputError(f"no {finding} probe for {search.table_name}: run `medvec eval --probes` (or "
                               f"materialise finding_probes) first")
    pool = search.search_text(text, min(MAX_K, max(POOL_FACTOR * k, POOL_MIN)), filters)
    loaded = search.snapshot()
    rows = [loaded.row_of.get(hit.image_id) for hit in pool.hits]
    hits = [hit for hit, row in zip(pool.hits, rows) if row is not None]
    if not hits:
        return pool
    logits = probe_logits(probes["probes"][finding], loaded.index.vectors[[r for r in rows if r is not None]])
    order = np.argsort(-logits, kind="stable")[:k]
    reranked = []
    for rank, i in enumerate(order, start=1):
        hit = hits[i]
        hit.rank = rank
        hit.metadata["probe_score"] = round(float(1 / (1 + np.exp(-logits[i]))), 6)
        reranked.append(hit)
    pool.hits = reranked
    pool.route = f"{pool.route}+probe"
    pool.query = {**pool.query, "k": k, "rerank": "probe", "finding": finding, "pool": len(hits),
                  "probe_table_version": probes.get("table_version")}
    return pool
