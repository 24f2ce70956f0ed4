"""The versioned Myriad template, the answer parser and the ASCII tokenizer."""

from __future__ import annotations

import itertools

import pytest

from actors.modeling.grid import GRID_LABELS
from actors.modeling.prompt import (
    INSTRUCTION, NORMAL_ANSWER, PromptTemplate, parse_answer,
)
from actors.modeling.tokenizer_tiny import AsciiTokenizer
from configs.model_schema import ChatFormat, PromptConfig


def test_released_wording():
    t = PromptTemplate()
    assert t.version == "myriad-v1"
    assert t.answer([]) == "No, there exists no anomalies in the image."
    assert t.answer(["top left"]) == "Yes, there exists anomalies in the image, at the top left of the image."
    parts = t.parts()
    assert parts.prefix.endswith("<Img>")
    assert parts.suffix.startswith("</Img>" + INSTRUCTION)
    assert INSTRUCTION.endswith("find out if there are defects in this image.")
    assert PromptTemplate(PromptConfig(chat_format=ChatFormat.vicuna)).parts("Q?").suffix.endswith("ASSISTANT:")


def test_parser_round_trips_every_template_answer():
    t = PromptTemplate()
    v = parse_answer(t.answer([]))
    assert (v.parsed, v.anomalous, v.positions) == (True, False, ())
    for k in (1, 2, 3, 9):
        for combo in itertools.combinations(GRID_LABELS, k):
            v = parse_answer(t.answer(list(combo)))
            assert v.parsed and v.anomalous and v.positions == combo, combo


def test_parser_orders_positions_and_tolerates_case_and_tail():
    t = PromptTemplate()
    assert t.answer(["center", "top left"]).count("top left and center") == 1
    v = parse_answer("yes, there exists anomalies in the image, at the Bottom Right of the image. A scratch.")
    assert v.anomalous and v.positions == ("bottom right",)
    assert parse_answer("  No, there exists no anomalies in the image.  ").anomalous is False


@pytest.mark.parametrize("text", ["", "   ", "The part looks shiny.", "Maybe at the top left?"])
def test_parser_reports_unparseable(text):
    v = parse_answer(text)
    assert not v.parsed and v.anomalous is None and v.reason


def test_unknown_positions_and_empty_questions_refused():
    t = PromptTemplate()
    with pytest.raises(ValueError, match="unknown grid positions"):
        t.answer(["upper left"])
    with pytest.raises(ValueError, match="empty question"):
        t.parts("   ")


def test_ascii_tokenizer_round_trips_the_template():
    tok = AsciiTokenizer()
    t = PromptTemplate()
    texts = [t.parts().prefix, t.parts().suffix, t.parts("Is the left edge scratched?").suffix,
             NORMAL_ANSWER, *(t.answer([p]) for p in GRID_LABELS), t.answer(list(GRID_LABELS))]
    for text in texts:
        ids = tok.encode(text)
        assert all(0 <= i < 128 for i in ids)
        assert tok.decode(ids) == text
    assert tok.decode([tok.bos_token_id, *tok.encode("ok"), tok.eos_token_id]) == "ok"
    assert tok.decode(tok.encode("café")) == "caf?"  # non-ASCII -> unk, never a crash
