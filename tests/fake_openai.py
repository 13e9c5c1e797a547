"""A local OpenAI-compatible chat completions server with image input, for tests.

``POST /v1/chat/completions`` takes ``{"model", "messages": [{"role": "user", "content":
[{"type": "image_url", "image_url": {"url": data_uri}}, {"type": "text", "text": ...}]}]}``
and answers ``{"id", "object": "chat.completion", "created", "model", "choices": [{"index",
"message": {"role": "assistant", "content": "..."}, "finish_reason"}], "usage"}``, as vLLM,
Ollama, DashScope's compatible mode and OpenAI do. Errors use OpenAI's body ``{"error":
{"message", "type", "param", "code"}}``; the 401 message echoes the key it was given, as
OpenAI's does (there partly masked), so tests can check that the client never repeats it.

The fault plan, the request log and the fake vision model are those of ``fake_dashscope``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .fake_dashscope import FakeServer, LoggedRequest, caption, prompt_language

CHAT_PATH = "/v1/chat/completions"


class FakeOpenAI(FakeServer):
    """``FakeServer`` speaking the OpenAI chat completions protocol."""

    def handle(
        self, entry: LoggedRequest, request: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if entry.path != CHAT_PATH:
            return self.error(404, entry, message=f"Unknown path {entry.path}")
        entry.model = request.get("model")
        entry.kind = "describe"
        if not entry.model:
            return self.error(400, entry, message="you must provide a model parameter")
        try:
            content = request["messages"][-1]["content"]
            urls = [c["image_url"]["url"] for c in content if c.get("type") == "image_url"]
            texts = [c["text"] for c in content if c.get("type") == "text"]
        except (KeyError, IndexError, TypeError, AttributeError):
            return self.error(400, entry, message="Invalid 'messages'.")
        if len(urls) != 1 or len(texts) != 1:
            return self.error(400, entry, message="Expected one image_url and one text part.")
        entry.prompt = texts[0]
        try:
            image = self._image(entry, urls[0])
        except ValueError as exc:
            return self.error(400, entry, message=str(exc))
        cap = caption(image, prompt_language(texts[0]))
        entry.answer = cap.answer
        return (
            200,
            {},
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": entry.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": cap.answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340},
            },
        )

    def error(
        self,
        status: int,
        entry: LoggedRequest,
        headers: dict[str, str] | None = None,
        *,
        message: str | None = None,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """OpenAI's error body for ``status``."""
        presented = entry.auth.removeprefix("Bearer ").strip()
        kinds = {
            400: ("invalid_request_error", None, "Invalid request."),
            401: (
                "invalid_request_error",
                "invalid_api_key",
                f"Incorrect API key provided: {presented}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
            ),
            404: ("invalid_request_error", "model_not_found", "The model does not exist."),
            429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
            500: ("server_error", None, "The server had an error while processing your request."),
            503: ("server_error", None, "The engine is currently overloaded."),
        }
        kind, code, default = kinds.get(status, ("server_error", None, "Error."))
        headers = dict(headers or {})
        if status == 429:
            headers.setdefault("x-ratelimit-limit-requests", "60")
            headers.setdefault("x-ratelimit-remaining-requests", "0")
            headers.setdefault("x-ratelimit-reset-requests", "1s")
        body = {"message": message or default, "type": kind, "param": None, "code": code}
        return status, headers, {"error": body}
