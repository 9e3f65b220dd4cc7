"""Who answers the judge's questions: an OpenAI-compatible server, or a local transformers model.

A backend turns ``JudgeRequest`` s (an image, a prompt, a JSON schema of the wanted reply) into
``JudgeReply`` s (the reply text and "ok", or a transport failure kind). It never raises for a
failed request: the metric records the failure next to the image and moves on.
"""

from __future__ import annotations

import base64
import email.utils
import io
import itertools
import json
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

from autolora.devices import default_device
from autolora.errors import ConfigError

if TYPE_CHECKING:
    from autolora.metrics.judge import JudgeConfig


@dataclass
class JudgeRequest:
    """One question to the judge: the image is shown first, then ``prompt`` (the paper's order)."""

    image: Image.Image
    prompt: str
    schema_name: str
    schema: dict[str, Any]


@dataclass
class JudgeReply:
    """The judge's answer text, or on failure a description of it; ``status`` is "ok" or the failure kind."""

    text: str
    status: str = "ok"


class JudgeBackend(ABC):
    """Answers judge requests."""

    @abstractmethod
    def ask_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply]:
        """One reply per request, in order."""


class JudgeTransportError(Exception):
    """A request that got no usable reply; ``status`` is its kind (``http_500``, ``timeout``...)."""

    def __init__(self, status: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def png_data_url(image: Image.Image) -> str:
    """``image`` as a base64 PNG data URL, the form chat-completions servers accept inline."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


_RETRYABLE = ("http_429", "timeout", "connection_error")


@dataclass
class OpenAIBackend(JudgeBackend):
    """Any server speaking the OpenAI chat-completions API (vLLM, Ollama, llama.cpp, hosted APIs).

    Asks at temperature 0 with a fixed seed, with the image as a PNG data URL, and — when
    ``structured`` — a JSON-schema ``response_format``; a server that answers 400 to that is asked
    again without it (422 too, for servers that validate with FastAPI), and from then on never with it. 429, 5xx, timeouts and refused connections
    are retried with exponential backoff and jitter, or after the server's Retry-After.
    """

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    max_retries: int = 5
    seed: int = 0
    concurrency: int = 4
    structured: bool = True
    #: First backoff in seconds; doubles per retry up to ``max_backoff``.
    backoff: float = 1.0
    max_backoff: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        self._endpoint = self.url.rstrip("/") + "/chat/completions"
        self._schema_refused = threading.Event()
        # One pooled client: thousands of requests reuse their connections (httpx is thread-safe).
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(headers=headers, timeout=self.timeout)

    def ask_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.ask, requests))

    def ask(self, request: JudgeRequest) -> JudgeReply:
        """One request, retried as needed; failures come back as a reply with their kind."""
        try:
            structured = self.structured and not self._schema_refused.is_set()
            try:
                response = self._post(self._body(request, structured))
            except JudgeTransportError as error:
                if not (structured and error.status in ("http_400", "http_422")):
                    raise
                # The server does not know json_schema output; ask in plain text as the paper did.
                self._schema_refused.set()
                response = self._post(self._body(request, structured=False))
            return JudgeReply(_message_text(response))
        except JudgeTransportError as error:
            return JudgeReply(self._redact(str(error)), error.status)

    def _body(self, request: JudgeRequest, structured: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": png_data_url(request.image)}},
                        {"type": "text", "text": request.prompt},
                    ],
                }
            ],
            "temperature": 0,
            "seed": self.seed,
        }
        if structured:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": True},
            }
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body``, retrying 429, 5xx, timeouts and refused connections (the retry policy)."""
        for attempt in itertools.count():
            try:
                return self._post_once(body)
            except JudgeTransportError as error:
                if error.status not in _RETRYABLE and not error.status.startswith("http_5"):
                    raise
                if attempt == self.max_retries:
                    raise
                if error.retry_after is not None:
                    self.sleep(error.retry_after)
                else:
                    delay = min(self.max_backoff, self.backoff * 2**attempt)
                    self.sleep(delay * (1 + random.random() / 2))  # jitter spreads out parallel retries

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(self._endpoint, json=body)
        except httpx.TimeoutException:
            raise JudgeTransportError(
                "timeout", f"no reply from {self._endpoint} in {self.timeout} s"
            ) from None
        except httpx.TransportError as error:  # refused, reset, or cut off while reading the reply
            raise JudgeTransportError(
                "connection_error", f"cannot reach {self._endpoint}: {error!r}"
            ) from None
        if response.is_error:
            raise JudgeTransportError(
                f"http_{response.status_code}",
                f"HTTP {response.status_code} from {self._endpoint}: {response.text[:500]}",
                _retry_after_seconds(response.headers.get("Retry-After")),
            )
        try:
            return response.json()
        except json.JSONDecodeError:
            raise JudgeTransportError(
                "bad_response", f"{self._endpoint} answered non-JSON: {response.content[:200]!r}"
            ) from None

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text


def _message_text(response: dict[str, Any]) -> str:
    """The assistant's text in a chat-completions response (a string, or a list of text parts)."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeTransportError(
            "bad_response", f"no choices[0].message.content in {str(response)[:200]}"
        ) from None
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise JudgeTransportError("bad_response", f"message content is {type(content).__name__}, not text")
    return content


@dataclass
class TransformersBackend(JudgeBackend):
    """A local image-text-to-text model (Llama-3.2-Vision, LLaVA, Qwen2-VL, ...) with greedy decoding.

    ``AutoModelForImageTextToText`` resolves a Llama-3.2-Vision checkpoint to
    ``MllamaForConditionalGeneration``; every model is prompted through its processor's chat template.
    Weights load on the first request.
    """

    model: str
    device: str | None = None
    dtype: str = "auto"
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            # Imported here: the server backend, the common case, should not pay for loading transformers.
            from transformers import AutoModelForImageTextToText, AutoProcessor

            device = self.device or default_device()
            try:
                processor = AutoProcessor.from_pretrained(self.model)
                model = AutoModelForImageTextToText.from_pretrained(
                    self.model, dtype=self.dtype, device_map=device
                )
            except (OSError, ValueError) as error:
                raise ConfigError(f"cannot load judge model {self.model!r}: {error}") from error
            self._loaded = (model.eval(), processor)
        return self._loaded

    def ask_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply]:
        return [self.ask(request) for request in requests]

    def ask(self, request: JudgeRequest) -> JudgeReply:
        """Greedy-decode the model's reply to the image followed by the prompt."""
        import torch

        model, processor = self._load()
        content = [
            {"type": "image", "image": request.image.convert("RGB")},
            {"type": "text", "text": request.prompt},
        ]
        # The processor's chat template places the image tokens and decides on special tokens.
        inputs = processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        reply = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return JudgeReply(reply)


def make_backend(config: JudgeConfig) -> JudgeBackend:
    """The backend ``config`` names, with URL, model and key taken from the environment when not given."""
    model = config.model or os.environ.get("AUTOLORA_JUDGE_MODEL")
    if not model:
        raise ConfigError("no judge model: pass model=... or set AUTOLORA_JUDGE_MODEL")
    if config.backend == "transformers":
        return TransformersBackend(
            model=model,
            device=config.device,
            dtype=config.dtype,
            max_new_tokens=config.max_new_tokens,
        )
    url = config.url or os.environ.get("AUTOLORA_JUDGE_URL")
    if not url:
        raise ConfigError(
            "no judge server: pass url=... or set AUTOLORA_JUDGE_URL (e.g. http://localhost:8000/v1)"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"judge url must start with http:// or https://, got {url!r}")
    return OpenAIBackend(
        url=url,
        model=model,
        api_key=config.api_key
        or os.environ.get("AUTOLORA_JUDGE_API_KEY")
        or os.environ.get("OPENAI_API_KEY"),
        timeout=config.timeout,
        max_retries=config.max_retries,
        seed=config.seed,
        concurrency=config.concurrency,
        structured=config.structured,
    )
