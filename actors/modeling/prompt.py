"""The versioned Myriad instruction template and answer parser (training and serving share it).

Wording from the released Myriad code (DESIGN.md 2): the image comes first, between
``<Img>`` and ``</Img>``, then the instruction; the answer is one of

- "No, there exists no anomalies in the image."
- "Yes, there exists anomalies in the image, at the {pos} of the image."

where ``{pos}`` is one or more 3x3 grid labels (``actors.modeling.grid.GRID_LABELS``), joined
"a", "a and b", "a, b and c" in grid order.

The LLM input is laid out as (``PromptParts``)::

    prefix  = <chat user header> "<Img>"                 # fixed for a template version
    [visual]= Q-Former tokens (Nq + 49), VE tokens (18)   # inserted by the model
    suffix  = "</Img>" <instruction or question> <chat assistant header>
    answer  = <answer text> <eos>                         # training targets only

Example::

    >>> t = PromptTemplate()
    >>> t.answer(["top left", "center"])
    'Yes, there exists anomalies in the image, at the top left and center of the image.'
    >>> parse_answer(t.answer(["top left", "center"])).positions
    ('top left', 'center')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from actors.modeling.grid import GRID_LABELS
from configs.model_schema import ChatFormat, PromptConfig

PROMPT_VERSIONS = ("myriad-v1",)

# Released Myriad wording (instructionTemplates[1].format(instructions[0])).
INSTRUCTION = (
    "This image has not been edited. According to IAD expert opinions and corresponding "
    "visual descriptions, find out if there are defects in this image."
)
NORMAL_ANSWER = "No, there exists no anomalies in the image."
ANOMALY_ANSWER = "Yes, there exists anomalies in the image, at the {pos} of the image."
ANOMALY_ANSWER_NO_POS = "Yes, there exists anomalies in the image."

_CHAT = {
    ChatFormat.chatml: ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    ChatFormat.vicuna: ("USER: ", " ASSISTANT:"),
}

# What closes an assistant turn before the next user turn (multi-turn chat).
_TURN_END = {ChatFormat.chatml: "<|im_end|>\n", ChatFormat.vicuna: "</s>"}


@dataclass(frozen=True)
class PromptParts:
    prefix: str  # text before the visual tokens (same for every sample of a version)
    suffix: str  # text after the visual tokens: the question and the assistant header


@dataclass(frozen=True)
class ParsedAnswer:
    """A structured verdict from an answer; ``parsed`` is False when the text fits no form."""

    anomalous: bool | None
    positions: tuple[str, ...]
    parsed: bool
    reason: str = ""

    def as_dict(self) -> dict:
        return {"anomalous": self.anomalous, "positions": list(self.positions),
                "parsed": self.parsed, "reason": self.reason}


class PromptTemplate:
    """Builds prompts and target answers for one template version and chat format."""

    def __init__(self, config: PromptConfig = PromptConfig()) -> None:
        if config.version not in PROMPT_VERSIONS:
            raise ValueError(f"unknown prompt version {config.version!r}: {PROMPT_VERSIONS}")
        self.config = config
        self.version = config.version
        self._user, self._assistant = _CHAT[config.chat_format]

    def parts(self, question: str | None = None) -> PromptParts:
        """Prompt around the visual tokens; ``question`` None asks the standard instruction."""
        text = INSTRUCTION if question is None else question.strip()
        if not text:
            raise ValueError("empty question")
        return PromptParts(prefix=self._user + "<Img>", suffix="</Img>" + text + self._assistant)

    def conversation(self, history: list[tuple[str, str]], question: str) -> str:
        """A follow-up question with earlier (question, answer) turns, in the chat format.

        The result goes where one question goes (``parts(text)``): the image stays once, at
        the start of the first user turn, and each earlier answer closes its assistant turn.
        """
        end = _TURN_END[self.config.chat_format]
        text = ""
        for q, a in history:
            text += q.strip() + self._assistant + a.strip() + end + self._user
        return text + question.strip()

    @staticmethod
    def answer(positions: list[str] | tuple[str, ...] | None) -> str:
        """Target answer: no positions -> the normal answer; else the anomaly answer."""
        if not positions:
            return NORMAL_ANSWER
        unknown = [p for p in positions if p not in GRID_LABELS]
        if unknown:
            raise ValueError(f"unknown grid positions {unknown}; expected from {GRID_LABELS}")
        ordered = [p for p in GRID_LABELS if p in set(positions)]
        return ANOMALY_ANSWER.format(pos=join_positions(ordered))


def join_positions(labels: list[str]) -> str:
    if len(labels) == 1:
        return labels[0]
    return ", ".join(labels[:-1]) + " and " + labels[-1]


# Longest labels first so "top left" is never read as "top" + "left".
_POS_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, GRID_LABELS), key=len, reverse=True)) + r")\b"
)
_YES_RE = re.compile(r"^\W*(yes|there (?:exist|exists|are|is) (?:an? )?anomal)", re.I)
_NO_RE = re.compile(r"^\W*(no\b|there (?:exist|exists|are|is) no anomal)", re.I)


def parse_answer(text: str) -> ParsedAnswer:
    """Answer text -> ``ParsedAnswer`` (anomalous, grid positions in grid order).

    Accepts the template's answers and light variations (case, trailing text); anything
    else is reported as unparseable, never guessed.
    """
    clean = " ".join(text.strip().split())
    if not clean:
        return ParsedAnswer(None, (), False, "empty answer")
    if _NO_RE.match(clean):
        return ParsedAnswer(False, (), True)
    if _YES_RE.match(clean):
        found = {m.group(1).lower() for m in _POS_RE.finditer(clean.lower())}
        return ParsedAnswer(True, tuple(p for p in GRID_LABELS if p in found), True)
    return ParsedAnswer(None, (), False, "answer does not start with yes or no")
