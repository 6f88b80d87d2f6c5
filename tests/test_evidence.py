"""What the workbench shows first: grounding badges, readable inert corpus text, a batch's ETA (no Streamlit)."""

from core.generation.engine import RunProgress
from core.review.evidence import flagged_answers, turn_badge
from core.generation.jobs import eta_text
from core.corpus.readable import readable_html


def detail(score, kinds=(), citations=0, stale=False, checks=None):
    checks = checks or [""] * len(kinds)
    return {"score": score, "stale": stale, "citations": [{"text": "§ 12"}] * citations,
            "sentences": [{"kind": k, "check": c, "start": 0, "end": 1} for k, c in zip(kinds, checks)]}


def test_badges_say_what_the_checks_found():
    assert turn_badge(None).label == "not checked" and not turn_badge(None).flagged
    good = turn_badge(detail(0.91, ["supported", "supported"]))
    assert (good.colour, good.label, good.flagged) == ("green", "grounded · passage match · 0.91", False)
    bad = turn_badge(detail(0.3, ["supported", "unsupported", "contradicted"], citations=1,
                            checks=["similarity", "figure", "polarity"]))
    assert bad.colour == "red" and bad.flagged
    # The badge says which kind of check spoke.
    assert bad.label == "2 unsupported sentences (figure check, polarity check) · 1 identifier not in the passages"
    # Not decided offline: neutral, not a flag, and not called grounded either.
    open_ = turn_badge(detail(0.7, ["supported", "not_checked"], checks=["similarity", "none"]))
    assert (open_.colour, open_.flagged) == ("gray", False) and "1 unchecked offline" in open_.label
    # Below the threshold (a stored older result, or one fitted to reviewers): amber.
    weak = turn_badge(detail(0.2, ["weak"]))
    assert weak.colour == "orange" and weak.flagged
    fitted = turn_badge(detail(0.6, ["supported"]), threshold=0.7)
    assert fitted.colour == "orange" and "fitted to reviewers" in fitted.label
    llm = turn_badge(detail(1.0, ["supported"]) | {"method": "llm-verifier-v1:gemini-2.5-flash"})
    assert "LLM verifier" in llm.label
    stale = turn_badge(detail(0.1, ["unsupported"], stale=True))
    assert stale.colour == "gray" and not stale.flagged  # describes text that is gone: no verdict
    assert flagged_answers([detail(0.9, ["supported"]), detail(0.3, ["unsupported"]), detail(0.1, ["weak"])]) == 2


def test_corpus_text_reads_as_formatting_and_never_as_markup():
    text = ("# Okafor v. Linden\n## Facts\nThe **deposit** was kept; see [the lease](javascript:alert(1)).\n"
            "- item one\n<script>window.__x = 1</script> AT&T deposit in snake_case_name")
    out = readable_html(text, ["deposit", "amp"])
    assert "<script>" not in out and "&lt;script&gt;window.__x = 1&lt;/script&gt;" in out  # shown as written
    assert "snake_case_name" in out
    assert "javascript" not in out and "the lease" in out  # a link keeps its words, not its target
    assert "#" not in out and "**" not in out
    assert '<strong style="font-size:1.25em">Okafor v. Linden</strong>' in out
    assert "<strong><mark>deposit</mark></strong>" in out and "AT&amp;T <mark>deposit</mark>" in out
    assert "• item one" in out


def test_eta_from_this_session_pace():
    def progress(saved, target, here, elapsed, status="running"):
        return RunProgress("r", status, saved, target, 0, "", {"saved_this_session": here, "elapsed_s": elapsed})

    assert eta_text(progress(0, 10, 0, 5.0)) == ""  # nothing saved yet: no guess
    assert eta_text(progress(2, 10, 2, 10.0)) == "about 40 s left"
    assert eta_text(progress(12, 20, 2, 60.0)) == "about 4 min left"  # resumed: pace of this session only
    assert eta_text(progress(10, 10, 10, 60.0, "completed")) == ""
