"""Say what the model is: answers from a random-weights model carry its note; negated findings in a
report are not highlighted as hits; report scores say they are rank fusions."""

from __future__ import annotations

from medvec.models.registry import RANDOM_WEIGHTS_NOTE, REGISTRY, quality_note
from medvec.search.reports import make_snippet, query_words
from medvec.serve.schema import FUSED_SCALE, HealthOut, ReportSearchAnswer, SearchAnswer


def test_random_weight_models_carry_the_note_and_real_ones_none():
    assert quality_note("tiny-siglip") == RANDOM_WEIGHTS_NOTE
    assert all(spec.quality_note for spec in REGISTRY.values() if spec.no_retrieval_quality)
    assert quality_note("siglip-base") == "" and quality_note("someone/unregistered") == ""


def test_answers_name_a_random_weights_model_as_such():
    answer = SearchAnswer(hits=[], route="index", model="tiny-siglip", table="t", table_version=1)
    assert answer.model_dump()["model_note"] == RANDOM_WEIGHTS_NOTE
    health = HealthOut(ok=True, model="siglip-base", table="t", auth_required=False)
    assert health.model_note == ""
    reports = ReportSearchAnswer(mode="hybrid", model="tiny-siglip", table="r", studies=[], images=[])
    assert reports.score_scale == FUSED_SCALE and "not a cosine" in FUSED_SCALE


def _marked(text: str, query: str) -> list[str]:
    snippet, spans = make_snippet({"impression": text}, query_words(query))
    return [snippet[a:b].lower() for a, b in spans]


def test_a_negated_finding_is_not_highlighted():
    assert _marked("The heart is enlarged. No pleural effusion. No focal consolidation.", "pleural effusion") == []
    assert _marked("Without pleural effusion.", "pleural effusion") == []


def test_a_present_finding_is_highlighted_even_after_a_negated_one():
    assert _marked("Small right pleural effusion.", "pleural effusion") == ["pleural", "effusion"]
    assert _marked("No pneumothorax. Small pleural effusion.", "pleural effusion") == ["pleural", "effusion"]
    assert _marked("No pneumothorax, but a small pleural effusion.", "pleural effusion") == ["pleural", "effusion"]
