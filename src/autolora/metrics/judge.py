"""VLM-as-judge metrics of the AutoLoRA paper (appendix A): character presence and pixel-art quality.

``judge:cps`` asks a vision-language model how clearly a character (Princess Anna by default)
appears in an image, 0-5 (appendix A.1). ``judge:pc_sa`` asks how well an image matches its
generation prompt (prompt correspondence, PC) and a style (style adherence, SA), each 0-5
(appendix A.2). The prompts are the paper's, verbatim; the reply is parsed leniently (fences,
prose, "4/5", trailing commas) but validated strictly: a reply that yields no valid score is
stored with its raw text and a failure status and scored NaN, never 0.

Which model answers is the ``backend`` option (``autolora.metrics.judge_backends``): any
OpenAI-compatible server, or a local transformers image-text-to-text model.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from abc import abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from string import Template
from typing import Any, ClassVar, Literal

from autolora.errors import ConfigError, InputFileError
from autolora.metrics.judge_backends import JudgeRequest, make_backend
from autolora.metrics.registry import ImageRecord, Metric, register_metric

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Appendix A.1: character presence score. The paper's image comes first (its "<IMAGE DATA>"),
# then this text. Fields let another character be judged; the defaults render the paper's prompt.


@dataclass(frozen=True)
class Character:
    """How the presence prompt names a character: ``name`` everywhere, the rest where the paper varies it."""

    name: str
    #: Where the character comes from, in the opening sentence ("Disney’s Frozen movie"); "" for none.
    source: str = ""
    #: The shorter source of the top score's line ("Frozen"); defaults to ``source``.
    short_source: str = ""
    #: The name in the example reason keywords ("no Anna character"); defaults to ``name``.
    short_name: str = ""
    #: Object pronoun in "it’s not clear if it’s her".
    pronoun: str = "them"

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("judge character name must not be empty")


ANNA = Character(
    name="Princess Anna",
    source="Disney’s Frozen movie",
    short_source="Frozen",
    short_name="Anna",
    pronoun="her",
)

CPS_TEMPLATE = Template(
    "Evaluate the presence of ${name}${from_source} in the image. Output a score between 0 and 5, where:\n"
    "\n"
    "* 0: ${name} is not present in the image.\n"
    "\n"
    "* 1: The image contains a character with a vague resemblance to ${name}, but it’s not clear if it’s"
    " ${pronoun}. (e.g., a character with a similar hairstyle or dress color)\n"
    "\n"
    "* 2: The image contains a character that shares some similarities with ${name}, but it’s not a clear"
    " match. (e.g., a character with a similar face shape or clothing style)\n"
    "\n"
    "* 3: The image contains a character that is similar to ${name}, but with some noticeable differences."
    " (e.g., a character with a similar dress and hairstyle, but different facial features)\n"
    "\n"
    "* 4: The image contains a character that is very likely to be ${name}, but with some minor differences."
    " (e.g., a character with a similar face, dress, and hairstyle, but with a slightly different expression"
    " or pose)\n"
    "\n"
    "* 5: The image contains a character that is unmistakably ${name}${from_short_source}.\n"
    "\n"
    "Output the score in following JSON format:\n"
    "\n"
    "```\n"
    "{\n"
    '  "score": [score between 0 and 5],\n'
    '  "reason": [use keywords to describe the reason of the score, e.g., ["dress", "hairstyle",'
    ' "no ${short_name} character"]]\n'
    "}\n"
    "```\n"
    "\n"
    "Reply only with a JSON with no extra text"
)


def as_character(character: Character | str | Mapping[str, str]) -> Character:
    """A ``Character`` from itself, a bare name, or a mapping of its fields (as options arrive from JSON)."""
    if isinstance(character, Character):
        return character
    if isinstance(character, str):
        return Character(name=character)
    if isinstance(character, Mapping):
        known = {f.name for f in fields(Character)}
        unknown = sorted(set(character) - known)
        if unknown or "name" not in character:
            raise ConfigError(
                f"judge character needs 'name' and only the fields {sorted(known)}; got {sorted(character)}"
            )
        return Character(**character)
    raise ConfigError(f"judge character must be a name or a mapping, not {type(character).__name__}")


def cps_prompt(character: Character | str | Mapping[str, str] = ANNA) -> str:
    """The appendix A.1 prompt for ``character``; the default is the paper's text byte for byte."""
    c = as_character(character)
    short_source = c.short_source or c.source
    return CPS_TEMPLATE.substitute(
        name=c.name,
        from_source=f" from {c.source}" if c.source else "",
        from_short_source=f" from {short_source}" if short_source else "",
        short_name=c.short_name or c.name,
        pronoun=c.pronoun,
    )


# ---------------------------------------------------------------------------------------------
# Appendix A.2: prompt correspondence and style adherence. The paper's style scale has no 0 line
# and speaks of pixel art only, so another style needs its own scale (``style_scale``).

PAPER_STYLE = "pixel art"

PIXEL_ART_STYLE_SCALE = (
    "1: Very poorly (the image attempts to mimic pixel art, but lacks clear pixelation, has excessive"
    " aliasing, or uses too many colors)\n"
    "\n"
    "2: Somewhat (the image shows some pixel art characteristics, such as pixelation, but lacks consistency"
    " in pixel size, color palette, or has noticeable artifacts)\n"
    "\n"
    "3: Fairly well (the image generally adheres to pixel art principles, with clear pixelation, a limited"
    " color palette, and minimal aliasing, but may have some minor flaws)\n"
    "\n"
    "4: Very well (the image strongly adheres to pixel art principles, with crisp pixelation, a well-chosen"
    " color palette, and minimal to no aliasing or artifacts)\n"
    "\n"
    "5: Perfectly (the image perfectly captures the pixel art style, with precise pixelation, a masterfully"
    " chosen color palette, and no noticeable flaws or artifacts)"
)

PC_SA_TEMPLATE = Template(
    "Evaluate the given image for the prompt ${prompt} and the ${style} style\n"
    "\n"
    "Access the following metrics:\n"
    "\n"
    "Prompt correspondence: How well does the image capture the essence, objects, and scenes described in"
    " the prompt? Scale: 0-5, where:\n"
    "\n"
    "0: Not at all (the image does not relate to the prompt in any way)\n"
    "\n"
    "1: Very poorly (the image vaguely relates to the prompt, but most key elements are missing or"
    " incorrect)\n"
    "\n"
    "2: Somewhat (the image captures some key elements of the prompt, but others are missing or incorrect)\n"
    "\n"
    "3: Fairly well (the image captures most key elements of the prompt, but some details may be off)\n"
    "\n"
    "4: Very well (the image accurately captures the essence and most key elements of the prompt)\n"
    "\n"
    "5: Exactly (the image perfectly captures the essence, objects, and scenes described in the prompt)\n"
    "\n"
    "Style adherence: How well does the image adhere to the specified style? If the style is ${style}, does"
    " the image truly resemble ${style}, or is it just a low-quality image? Scale: 0-5, where:\n"
    "\n"
    "${style_scale}\n"
    "\n"
    "Provide the evaluation scores in the following JSON format:\n"
    "\n"
    "```\n"
    "{\n"
    '"prompt_correspondence": [the prompt correspondence score from 0 to 5],\n'
    '"style_adherence": [the style adherence score from 0 to 5],\n'
    "}\n"
    "Reply only with a JSON with no extra text\n"
    "```"
)


def pc_sa_prompt(prompt: str, style: str = PAPER_STYLE, style_scale: str | None = None) -> str:
    """The appendix A.2 prompt for an image generated from ``prompt``; defaults reproduce the paper."""
    if style_scale is None:
        if style != PAPER_STYLE:
            raise ConfigError(
                f"the paper's style scale describes {PAPER_STYLE!r}; pass style_scale=... to judge style {style!r}"
            )
        style_scale = PIXEL_ART_STYLE_SCALE
    return PC_SA_TEMPLATE.substitute(prompt=prompt, style=style, style_scale=style_scale)


# ---------------------------------------------------------------------------------------------
# Reply parsing: find the JSON (or the labelled numbers), coerce each score, validate 0 <= s <= 5.

ParseStatus = Literal["ok", "empty", "no_scores", "missing_key", "not_a_number", "out_of_range"]

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
#: A score written as text: "4", "4.5", "4/5", "[4]", optionally followed by words ("4 - very likely").
_SCORE_TEXT = re.compile(rf"\[?\s*({_NUMBER})\s*(?:/\s*({_NUMBER}))?\s*\]?(?:\s*[^\d\s./].*)?", re.S)
_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_THINKING = re.compile(r"<think>.*?</think>", re.S)


@dataclass
class ParsedScores:
    """Scores read from one reply (NaN each unless ``status == "ok"``) and why parsing failed, if it did."""

    scores: dict[str, float]
    status: ParseStatus


def _normalise_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: inside a code fence, or between the outermost braces."""
    candidates = [*_FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        cleaned = _TRAILING_COMMA.sub(r"\1", candidate.strip())
        for loads in (json.loads, ast.literal_eval):  # literal_eval: single-quoted Python dicts
            try:
                value = loads(cleaned)
            except (ValueError, SyntaxError, RecursionError):
                continue
            if isinstance(value, dict):
                return value
    return None


def _find_key(obj: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """``obj[key]`` matched case- and separator-insensitively, searching nested objects too."""
    for name, value in obj.items():
        if isinstance(name, str) and _normalise_key(name) == key:
            return True, value
    for value in obj.values():
        if isinstance(value, Mapping):
            found, nested = _find_key(value, key)
            if found:
                return True, nested
    return False, None


def _to_score(value: Any) -> float | None:
    """A number from a JSON value: 4, 4.5, "4", "4/5", [4]; None when it is not one number out of 5."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list) and len(value) == 1:
        return _to_score(value[0])
    if isinstance(value, str):
        match = _SCORE_TEXT.fullmatch(value.strip())
        if match is None:
            return None
        numerator, denominator = match.groups()
        # "x/5" is a score out of the asked scale; another denominator would need rescaling we won't guess.
        if denominator is not None and float(denominator) != 5:
            return None
        return float(numerator)
    return None


def _labelled_score(text: str, key: str) -> str | None:
    """The number after a label in prose, e.g. ``Score: 4.5`` or ``Prompt correspondence - 4/5``."""
    label = r"[\s_\-]*".join(map(re.escape, key.split("_")))
    match = re.search(rf"{label}[\"'*\s]*[:=\-]?[\"'*\s]*\[?\s*({_NUMBER}(?:\s*/\s*{_NUMBER})?)", text, re.I)
    return match.group(1) if match else None


def parse_scores(reply: str, keys: Sequence[str]) -> ParsedScores:
    """Read the 0-5 scores named ``keys`` from a judge's reply.

    Accepts a JSON object (fenced, wrapped in prose, with trailing commas or single quotes) whose
    values are numbers, numeric strings, "x/5" or one-element lists; failing JSON, labelled numbers in
    prose ("Score: 4"); for a single key, a bare number. Any missing, non-numeric or out-of-range score
    makes every score NaN and names the failure in ``status``.
    """
    failed = {key: math.nan for key in keys}
    reply = _THINKING.sub("", reply)  # reasoning models think aloud before answering
    if not reply.strip():
        return ParsedScores(failed, "empty")
    obj = _json_object(reply)
    raw: dict[str, Any] = {}
    for key in keys:
        found, value = _find_key(obj, key) if obj is not None else (False, None)
        if not found:
            value = _labelled_score(reply, key)
            if value is None and len(keys) == 1 and obj is None and _SCORE_TEXT.fullmatch(reply.strip()):
                value = reply.strip()
            found = value is not None
        if found:
            raw[key] = value
    if not raw:
        return ParsedScores(failed, "no_scores" if obj is None else "missing_key")
    if len(raw) < len(keys):
        return ParsedScores(failed, "missing_key")
    scores = {key: _to_score(value) for key, value in raw.items()}
    if any(score is None or not math.isfinite(score) for score in scores.values()):
        return ParsedScores(failed, "not_a_number")
    if any(not 0 <= score <= 5 for score in scores.values()):
        return ParsedScores(failed, "out_of_range")
    return ParsedScores({key: float(scores[key]) for key in keys}, "ok")


# ---------------------------------------------------------------------------------------------
# The metrics.


@dataclass
class JudgeConfig:
    """Options of the judge metrics; ``url``/``model``/``api_key`` default to environment variables."""

    #: "openai": any OpenAI-compatible chat-completions server; "transformers": a local model.
    backend: Literal["openai", "transformers"] = "openai"
    #: Server base URL, e.g. http://localhost:8000/v1 (env AUTOLORA_JUDGE_URL).
    url: str | None = None
    #: Served model name, or a transformers model id/folder (env AUTOLORA_JUDGE_MODEL).
    model: str | None = None
    #: Bearer key (env AUTOLORA_JUDGE_API_KEY, then OPENAI_API_KEY); never stored or printed.
    api_key: str | None = field(default=None, repr=False)
    #: Who ``judge:cps`` looks for: a name, a mapping of ``Character`` fields, or a ``Character``.
    character: Character | str | Mapping[str, str] = ANNA
    #: The style ``judge:pc_sa`` checks; another style than the paper's needs ``style_scale``.
    style: str = PAPER_STYLE
    style_scale: str | None = None
    #: Requests in flight at once (openai backend).
    concurrency: int = 4
    #: Seconds per request (openai backend).
    timeout: float = 120.0
    #: Retries after a 429, a 5xx, a timeout or a refused connection.
    max_retries: int = 5
    seed: int = 0
    #: Ask the server for JSON-schema-constrained output; it falls back to plain text when refused.
    structured: bool = True
    #: transformers backend: device ("cuda" when available, else "cpu"), dtype, reply length.
    device: str | None = None
    dtype: str = "auto"
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.backend not in ("openai", "transformers"):
            raise ConfigError(f"judge backend must be 'openai' or 'transformers', not {self.backend!r}")
        if self.concurrency < 1:
            raise ConfigError(f"judge concurrency must be at least 1, got {self.concurrency}")
        if self.timeout <= 0:
            raise ConfigError(f"judge timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            raise ConfigError(f"judge max_retries must be 0 or more, got {self.max_retries}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"judge max_new_tokens must be at least 1, got {self.max_new_tokens}")
        self.character = as_character(self.character)


def _score_schema(keys: Sequence[str], reason: bool) -> dict[str, Any]:
    """JSON schema of the reply: each key a number in [0, 5] (plus the keyword list of A.1)."""
    properties: dict[str, Any] = {key: {"type": "number", "minimum": 0, "maximum": 5} for key in keys}
    if reason:
        properties["reason"] = {"type": "array", "items": {"type": "string"}}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


class VLMJudgeMetric(Metric):
    """An image-level metric whose scores come from a vision-language model's reply to a prompt."""

    level = "image"
    #: Reply key -> result column.
    score_columns: ClassVar[dict[str, str]]
    #: Prefix of the ``<prefix>_status`` and ``<prefix>_raw`` columns.
    prefix: ClassVar[str]
    schema: ClassVar[dict[str, Any]]

    def __init__(self, **options: Any) -> None:
        try:
            self.config = JudgeConfig(**options)
        except TypeError as error:
            known = ", ".join(f.name for f in fields(JudgeConfig))
            raise ConfigError(f"{self.name}: {error}; known options: {known}") from None
        # The key must not reach the recorded options (they are written next to the results).
        super().__init__(**{k: v for k, v in options.items() if k != "api_key"})
        self.backend = make_backend(self.config)

    @abstractmethod
    def prompt_for(self, record: ImageRecord) -> str:
        """The judge prompt for one image."""

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One row per record: the score columns (NaN on failure), ``<prefix>_status`` and ``<prefix>_raw``."""
        requests = [
            JudgeRequest(
                image=r.image, prompt=self.prompt_for(r), schema_name=self.prefix, schema=self.schema
            )
            for r in records
        ]
        rows = []
        for reply in self.backend.ask_many(requests):
            if reply.status == "ok":
                parsed = parse_scores(reply.text, list(self.score_columns))
            else:
                parsed = ParsedScores({key: math.nan for key in self.score_columns}, reply.status)
            row: dict[str, Any] = {column: parsed.scores[key] for key, column in self.score_columns.items()}
            row[f"{self.prefix}_status"] = parsed.status
            row[f"{self.prefix}_raw"] = reply.text
            rows.append(row)
        self._report_failures(rows)
        return rows

    def _report_failures(self, rows: Sequence[Mapping[str, Any]]) -> None:
        failures = Counter(
            row[f"{self.prefix}_status"] for row in rows if row[f"{self.prefix}_status"] != "ok"
        )
        if failures:
            kinds = ", ".join(f"{kind}={count}" for kind, count in sorted(failures.items()))
            logger.warning(
                "%s: %d of %d judge replies gave no valid score (%s); they are NaN",
                self.name,
                sum(failures.values()),
                len(rows),
                kinds,
            )


@register_metric("judge:cps")
class CharacterPresenceScore(VLMJudgeMetric):
    """Character presence score, 0-5 (paper appendix A.1); column ``cps``."""

    score_columns: ClassVar[dict[str, str]] = {"score": "cps"}
    prefix = "cps"
    schema: ClassVar[dict[str, Any]] = _score_schema(["score"], reason=True)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._prompt = cps_prompt(self.config.character)

    def prompt_for(self, record: ImageRecord) -> str:
        """The same presence question for every image."""
        return self._prompt


@register_metric("judge:pc_sa")
class PromptCorrespondenceStyleAdherence(VLMJudgeMetric):
    """Prompt correspondence and style adherence, 0-5 each (paper appendix A.2); columns ``pc`` and ``sa``."""

    score_columns: ClassVar[dict[str, str]] = {"prompt_correspondence": "pc", "style_adherence": "sa"}
    prefix = "pc_sa"
    schema: ClassVar[dict[str, Any]] = _score_schema(
        ["prompt_correspondence", "style_adherence"], reason=False
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        pc_sa_prompt("", self.config.style, self.config.style_scale)  # a style without a scale fails here

    def prompt_for(self, record: ImageRecord) -> str:
        """The prompt filled with the image's own generation prompt, ``record.meta["prompt"]``."""
        prompt = record.meta.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            where = record.path or f"image {record.sha256[:12]}"
            raise InputFileError(
                f"{where} has no generation prompt in its metadata ('prompt'); judge:pc_sa needs it"
            )
        return pc_sa_prompt(prompt, self.config.style, self.config.style_scale)


__all__ = [
    "ANNA",
    "CPS_TEMPLATE",
    "PAPER_STYLE",
    "PC_SA_TEMPLATE",
    "PIXEL_ART_STYLE_SCALE",
    "Character",
    "CharacterPresenceScore",
    "JudgeConfig",
    "ParsedScores",
    "PromptCorrespondenceStyleAdherence",
    "VLMJudgeMetric",
    "as_character",
    "cps_prompt",
    "parse_scores",
    "pc_sa_prompt",
]
