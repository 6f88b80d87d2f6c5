"""Gemini's Batch API through google-genai's ``client.batches`` and ``client.files``: submit, find, poll, collect.

One small interface for the batch run (``core.generation.batch_run``): it hands over keyed requests and gets back, per
key, an :class:`LLMResult` or the :class:`LLMError` that entry ended in. Requests go inline while they fit
under ``inline_limit`` bytes (Google caps an inline batch request at 20 MB), else as a JSONL file uploaded
with the Files API; results come back inline or as a JSONL file to download, and map back by key.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import pydantic
from google.genai import batches as genai_batches
from google.genai import errors as genai_errors
from google.genai import types

from core.providers.base import LLMError, LLMRequest, LLMResult
from core.providers.gemini import _TRANSPORT_ERRORS, GeminiProvider

# Google's cap is 20 MB for the whole inline request; stay clear of it (the JSON envelope adds a little).
INLINE_LIMIT_BYTES = 19 * 1024 * 1024
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "QUEUED", "UNSPECIFIED"})
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "PARTIALLY_SUCCEEDED"})


@dataclass
class BatchStatus:
    """A job's state (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED) and, once it succeeded, its results."""

    name: str
    state: str
    error: str = ""
    results: dict[str, LLMResult | LLMError] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state not in ACTIVE_STATES


class GeminiBatchJobs:
    """Batch jobs on the Gemini Developer API, sharing a :class:`GeminiProvider`'s client, key and error mapping.

    Args:
        provider: the run's Gemini provider (its client, model, and reply/error conversion are reused, so a
            batch reply is checked exactly like a live one).
        inline_limit: bytes of encoded requests above which they go as an uploaded JSONL file.
    """

    def __init__(self, provider: GeminiProvider, inline_limit: int = INLINE_LIMIT_BYTES):
        self.provider = provider
        self.model = provider.model
        self.inline_limit = inline_limit
        self._client = provider._client
        # A provider that writes and reads generateContent's JSON itself (request_body) reads a reply from its
        # JSON; one that goes through the SDK's types reads a GenerateContentResponse.
        self._reads_json = hasattr(provider, "request_body")

    def _inlined(self, key: str, request: LLMRequest) -> types.InlinedRequest:
        """One entry as the SDK's type: the same fields the live provider sends for a generateContent call."""
        contents = [types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)])
                    for m in request.messages]
        budget = self.provider.settings.gemini_thinking_budget
        config = types.GenerateContentConfig(
            system_instruction=request.system or None, temperature=request.temperature,
            max_output_tokens=request.max_tokens, seed=request.seed,
            response_mime_type="application/json" if request.json_schema else None,
            response_json_schema=request.json_schema,  # plain JSON Schema, as the live calls send it
            thinking_config=types.ThinkingConfig(thinking_budget=budget) if budget >= 0 else None)
        return types.InlinedRequest(model=self.model, contents=contents, config=config, metadata={"key": key})

    def encode(self, key: str, request: LLMRequest) -> dict[str, Any]:
        """One request as the API's JSON (what goes inline, and each line of the JSONL file)."""
        wire = genai_batches._InlinedRequest_to_mldev(self._client._api_client, self._inlined(key, request))
        return {"key": key, "request": wire["request"]}

    def submit(self, entries: list[tuple[str, LLMRequest]], display_name: str) -> tuple[str, str]:
        """Create a job for keyed requests; returns its name and how it was sent (``inline`` or the file's name).

        Raises:
            LLMError: the API refused or could not be reached (``retryable`` says whether trying again helps).
        """
        lines = [json.dumps(self.encode(k, r), ensure_ascii=False) for k, r in entries]
        size = sum(len(line.encode()) for line in lines)
        try:
            if size <= self.inline_limit:
                job = self._client.batches.create(model=self.model, src=[self._inlined(k, r) for k, r in entries],
                                                  config={"display_name": display_name})
                return str(job.name), "inline"
            data = "".join(line + "\n" for line in lines).encode()
            uploaded = self._client.files.upload(file=io.BytesIO(data), config={
                "mime_type": "application/jsonl", "display_name": display_name})
            job = self._client.batches.create(model=self.model, src=str(uploaded.name),
                                              config={"display_name": display_name})
            return str(job.name), str(uploaded.name)
        except (genai_errors.APIError, *_TRANSPORT_ERRORS, json.JSONDecodeError, pydantic.ValidationError) as exc:
            error = self.provider._error_from(exc)
        raise error  # outside the except block: the SDK's exception holds the request, key header included

    def find(self, display_name: str, max_jobs: int = 500) -> str | None:
        """The newest job with this display name, if one exists (a submit whose answer was lost to a crash)."""
        try:
            for i, job in enumerate(self._client.batches.list(config={"page_size": 50})):
                if job.display_name == display_name:
                    return str(job.name)
                if i >= max_jobs:
                    break
            return None
        except (genai_errors.APIError, *_TRANSPORT_ERRORS, json.JSONDecodeError, pydantic.ValidationError) as exc:
            error = self.provider._error_from(exc)
        raise error

    def status(self, name: str) -> BatchStatus:
        """The job's state; once it succeeded, every entry's result by key (results files are downloaded)."""
        try:
            job = self._client.batches.get(name=name)
            state = _state(job.state)
            status = BatchStatus(name, state, error=str(job.error.message or "") if job.error else "")
            if state in ("SUCCEEDED", "PARTIALLY_SUCCEEDED") and job.dest is not None:
                if job.dest.file_name:
                    data = self._client.files.download(file=job.dest.file_name)
                    for i, line in enumerate(data.decode("utf-8").splitlines()):
                        if line.strip():
                            row = json.loads(line)
                            status.results[str(row.get("key", i))] = self._entry(row.get("response"), row.get("error"))
                else:
                    for i, entry in enumerate(job.dest.inlined_responses or []):
                        key = str((entry.metadata or {}).get("key", i))
                        error = entry.error.model_dump(exclude_none=True) if entry.error else None
                        response = (entry.response.model_dump(mode="json", by_alias=True, exclude_none=True)
                                    if entry.response is not None else None)
                        status.results[key] = self._entry(response, error)
            return status
        except (genai_errors.APIError, *_TRANSPORT_ERRORS, json.JSONDecodeError, pydantic.ValidationError) as exc:
            error = self.provider._error_from(exc)
        raise error

    def cancel(self, name: str) -> None:
        try:
            self._client.batches.cancel(name=name)
            return
        except (genai_errors.APIError, *_TRANSPORT_ERRORS, json.JSONDecodeError, pydantic.ValidationError) as exc:
            error = self.provider._error_from(exc)
        raise error

    def _entry(self, response: dict[str, Any] | None, error: dict[str, Any] | None) -> LLMResult | LLMError:
        """One entry's result from its JSON: a reply, or the error Google put in its place."""
        if error:
            code = int(error.get("code") or 0)
            return LLMError(f"Gemini failed this batch entry ({code or ''} {error.get('message') or ''})".replace(
                "( ", "(").strip(), kind="rate_limited" if code == 429 else "server", retryable=True,
                status=code or None)
        if response is None:
            return LLMError("Gemini returned a batch entry with neither a response nor an error.", kind="empty",
                            retryable=True)
        try:  # the live path's reading of a reply: the same finish reasons, safety and empty-text errors
            return self.provider._result_from(  # type: ignore[arg-type]
                response if self._reads_json else types.GenerateContentResponse.model_validate(response))
        except LLMError as e:  # safety, recitation, no text: the run treats these like a rejected reply
            return e


def _state(state: Any) -> str:
    name = str(getattr(state, "name", state) or "")
    return name.removeprefix("JOB_STATE_").removeprefix("BATCH_STATE_") or "UNSPECIFIED"
