"""The Gemini Batch API and Files API endpoints of the fake Gemini server (``fakes.gemini.FakeGemini``).

They follow what google-genai really sends (google/genai/batches.py, files.py and the resumable upload in
_api_client.py), matched by path suffix so any API version prefix works:

- ``POST …/models/{m}:batchGenerateContent``: a job from inline requests or an uploaded JSONL file
- ``GET …/batches/{id}``, ``GET …/batches``, ``POST …/batches/{id}:cancel``, ``DELETE …/batches/{id}``
- ``POST upload/…/files`` (``X-Goog-Upload-Command: start``, answered with ``X-Goog-Upload-URL``), then
  ``POST`` to that URL (``upload`` / ``upload, finalize``), then ``GET …/files/{id}:download?alt=media``

A job is PENDING for ``batch_pending_s``, RUNNING for ``batch_running_s`` (both may be changed while jobs
run, so a test can hold a job RUNNING), then ends in the next state of ``batch_outcomes`` (SUCCEEDED when
empty). Each request is answered by the same responder as ``generateContent``; ``batch_entry_fault(key,
request)`` may return an HTTP status to fail that one entry instead (partial failure, as the real API
reports it: an ``error`` in place of the ``response``); ``batch_create_faults`` fails the next creations.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

BATCH_PATH = re.compile(r"(:batchGenerateContent$)|(/batches(/[^/:]+)?(:cancel)?$)|(/files(/[^/:]+)?(:download)?$)")
DEFAULT_INLINE_LIMIT = 20 * 1024 * 1024  # the real API's cap on an inline batch request
_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


class GeminiBatchEndpoints:
    """Mixin for the fake Gemini server: batch jobs and files, kept in memory for the server's life."""

    def _init_batch(self) -> None:
        self.batch_pending_s = 0.2
        self.batch_running_s = 0.5
        self.batch_outcomes: deque[str] = deque()  # terminal states for the next jobs to finish, in order
        self.batch_entry_fault: Callable[[str, dict[str, Any]], int | None] | None = None
        # Faults for the next job creations, in order: 429 as the real API sends it when too many batch tokens
        # are enqueued (no RetryInfo, no quota details), 503 when it is overloaded, or "timeout": the job is
        # created but the answer comes only after ``batch_timeout_s`` (a client that gave up never learns its name).
        self.batch_create_faults: deque[int | str] = deque()
        self.batch_timeout_s = 2.0
        self.batch_inline_limit = DEFAULT_INLINE_LIMIT
        self.batch_keys_submitted: list[str] = []  # every request key of every job created, in order
        self.batch_jobs: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self._uploads: dict[str, dict[str, Any]] = {}
        self._batch_lock = threading.Lock()

    # ---- dispatch -------------------------------------------------------------------------------------------
    def _serve(self, handler: Any, method: str) -> None:
        path, _, query = handler.path.partition("?")
        if not BATCH_PATH.search(path):
            super()._serve(handler, method)  # type: ignore[misc]
            return
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        with self._lock:  # type: ignore[attr-defined]
            self.requests_total += 1  # type: ignore[attr-defined]
            self.by_path[path] += 1  # type: ignore[attr-defined]
        key = self._key_from(handler)  # type: ignore[attr-defined]
        if self.api_key is not None and key != self.api_key and "upload_id" not in query:  # type: ignore[attr-defined]
            status, body, headers = self._as_tuple(self._auth_failure(key))  # type: ignore[attr-defined]
        else:
            try:
                status, body, headers = self._batch_answer(method, path, parse_qs(query), handler.headers, raw)
            except Exception as exc:  # a bug here answers 500, as the generate path does
                status, body, headers = 500, json.dumps({"error": {"code": 500, "message": f"fake server bug: "
                                                                   f"{exc!r}", "status": "INTERNAL"}}).encode(), {}
        with self._lock:  # type: ignore[attr-defined]
            self.by_status[status] += 1  # type: ignore[attr-defined]
        try:
            handler.send_response(status)
            for name, value in {"Content-Type": "application/json; charset=UTF-8", **headers,
                                "Content-Length": str(len(body))}.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    @staticmethod
    def _as_tuple(reply: Any) -> tuple[int, bytes, dict[str, str]]:
        return reply.status, reply.body, dict(reply.headers)

    def _fail(self, status: int, message: str) -> tuple[int, bytes, dict[str, str]]:
        return self._as_tuple(self._error(status, message))  # type: ignore[attr-defined]

    @staticmethod
    def _ok(payload: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        return 200, json.dumps(payload).encode(), headers or {}

    def _batch_answer(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
                      raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        if path.endswith(":batchGenerateContent") and method == "POST":
            return self._create_job(path, raw)
        if "/upload/" in path and path.endswith("/files") and method == "POST":
            return self._upload(query, headers, raw)
        match = re.search(r"/files/([^/:]+)(:download)?$", path)
        if match and method == "GET":
            f = self.files.get(match.group(1))
            if f is None:
                return self._fail(404, f"File files/{match.group(1)} not found.")
            if match.group(2):
                return 200, f["data"], {"Content-Type": f["mime_type"]}
            return self._ok(f["meta"])
        match = re.search(r"/batches(?:/([^/:]+))?(:cancel)?$", path)
        if not match:
            return self._fail(404, f"Method not found: {method} {path}.")
        name = match.group(1)
        if name is None:
            return self._list_jobs(query) if method == "GET" else self._fail(404, f"Method not found: {method} {path}.")
        with self._batch_lock:
            job = self.batch_jobs.get(name)
            if job is None or job.get("deleted"):
                return self._fail(404, f"Batch batches/{name} not found.")
            if match.group(2) and method == "POST":
                if self._state(job) in ("PENDING", "RUNNING"):
                    job["cancelled"] = True
                return self._ok({})
            if method == "DELETE":
                job["deleted"] = True
                return self._ok({})
            if method == "GET":
                return self._ok(self._operation(job))
        return self._fail(404, f"Method not found: {method} {path}.")

    # ---- jobs -----------------------------------------------------------------------------------------------
    def _create_job(self, path: str, raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        model = (re.search(r"/models/([^/:]+)", path) or [None, ""])[1]
        if self.models is not None and model not in self.models:  # type: ignore[attr-defined]
            return self._fail(404, f"models/{model} is not found for API version v1beta.")
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = None
        batch = body.get("batch") if isinstance(body, dict) else None
        source = (batch or {}).get("inputConfig") or {}
        if not isinstance(batch, dict) or not source:
            return self._fail(400, "Invalid JSON payload received: batch.inputConfig is required.")
        if "requests" in source:
            if len(raw) > self.batch_inline_limit:
                return self._fail(400, f"Request payload size exceeds the limit: {self.batch_inline_limit} bytes.")
            entries = [((r.get("metadata") or {}).get("key") or str(i), r.get("request") or {})
                       for i, r in enumerate((source.get("requests") or {}).get("requests") or [])]
            file_name = ""
        else:
            file_name = str(source.get("fileName") or "")
            f = self.files.get(file_name.removeprefix("files/"))
            if f is None:
                return self._fail(400, f"File {file_name} not found.")
            try:
                lines = [json.loads(line) for line in f["data"].decode().splitlines() if line.strip()]
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._fail(400, f"The input file {file_name} is not valid JSONL.")
            entries = [(str(line.get("key", i)), line.get("request") or {}) for i, line in enumerate(lines)]
        if not entries:
            return self._fail(400, "A batch needs at least one request.")
        with self._batch_lock:
            fault = self.batch_create_faults.popleft() if self.batch_create_faults else None
        if fault == 429:
            return self._fail(429, "Resource has been exhausted (e.g. check quota).")
        if fault and fault != "timeout":
            return self._fail(int(fault), "The service is currently unavailable.")
        job_id = uuid.uuid4().hex[:16]
        with self._batch_lock:
            self.batch_keys_submitted.extend(k for k, _ in entries)
            job = {"id": job_id, "model": model, "display_name": batch.get("displayName") or "",
                   "entries": entries, "file_name": file_name, "created": time.monotonic(),
                   "create_time": _timestamp(), "outcome": None, "result": None, "cancelled": False}
            self.batch_jobs[job_id] = job
            reply = self._ok(self._operation(job))
        if fault == "timeout":
            time.sleep(self.batch_timeout_s)
        return reply

    def _state(self, job: dict[str, Any]) -> str:
        if job["outcome"]:
            return job["outcome"]
        if job["cancelled"]:
            job["outcome"] = "CANCELLED"
            return job["outcome"]
        elapsed = time.monotonic() - job["created"]
        if elapsed < self.batch_pending_s:
            return "PENDING"
        if elapsed < self.batch_pending_s + self.batch_running_s:
            return "RUNNING"
        outcome = self.batch_outcomes.popleft() if self.batch_outcomes else "SUCCEEDED"
        if outcome not in _STATES:
            raise ValueError(f"batch outcome {outcome!r} is not one of {_STATES}")
        if outcome == "SUCCEEDED":
            job["result"] = [self._entry_result(key, request, job["model"]) for key, request in job["entries"]]
        job["outcome"] = outcome
        job["end_time"] = _timestamp()
        return outcome

    def _entry_result(self, key: str, request: dict[str, Any], model: str) -> dict[str, Any]:
        status = self.batch_entry_fault(key, request) if self.batch_entry_fault else None
        if status:
            return {"key": key, "error": {"code": status, "message": "The model is overloaded. Please try again "
                                          "later." if status == 503 else "An internal error has occurred.",
                                          "status": _STATUS_NAMES.get(status, "UNKNOWN")}}
        return {"key": key, "response": self._generate(model, request)}  # type: ignore[attr-defined]

    def _operation(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job as the API returns it: a long-running operation whose metadata is the GenerateContentBatch."""
        state = self._state(job)
        n = len(job["entries"])
        failed = sum(1 for r in job["result"] or [] if "error" in r)
        stats = {"requestCount": str(n)}
        if state in ("PENDING", "RUNNING"):
            stats["pendingRequestCount"] = str(n)
        elif state == "SUCCEEDED":
            stats |= {"successfulRequestCount": str(n - failed), "failedRequestCount": str(failed)}
        metadata: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": f"models/{job['model']}", "displayName": job["display_name"], "name": f"batches/{job['id']}",
            "createTime": job["create_time"], "updateTime": _timestamp(), "batchStats": stats,
            "state": f"BATCH_STATE_{state}"}
        operation: dict[str, Any] = {"name": f"batches/{job['id']}", "metadata": metadata}
        if state in _STATES:
            operation["done"] = True
            metadata["endTime"] = job.get("end_time") or _timestamp()
        if state == "SUCCEEDED":
            if job["file_name"]:
                out = f"batch-{job['id']}"
                if out not in self.files:
                    data = "".join(json.dumps(r) + "\n" for r in job["result"]).encode()
                    self.files[out] = {"data": data, "mime_type": "application/jsonl",
                                       "meta": _file_meta(out, "application/jsonl", len(data), source="GENERATED")}
                output = {"responsesFile": f"files/{out}"}
            else:
                output = {"inlinedResponses": {"inlinedResponses": [
                    {**({"error": r["error"]} if "error" in r else {"response": r["response"]}),
                     "metadata": {"key": r["key"]}} for r in job["result"]]}}
            metadata["output"] = output
            operation["response"] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                                              "GenerateContentBatchOutput", **output}
        elif state == "FAILED":
            operation["error"] = {"code": 13, "message": "Batch failed: an internal error has occurred."}
        elif state == "EXPIRED":
            operation["error"] = {"code": 4, "message": "Batch expired: it did not finish within 48 hours."}
        return operation

    def _list_jobs(self, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        size = int((query.get("pageSize") or ["50"])[0] or 50)
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        with self._batch_lock:
            jobs = [j for j in reversed(list(self.batch_jobs.values())) if not j.get("deleted")]  # newest first
            page = [self._operation(j) for j in jobs[start:start + size]]
        reply: dict[str, Any] = {"operations": page}
        if start + size < len(jobs):
            reply["nextPageToken"] = str(start + size)
        return self._ok(reply)

    # ---- files (resumable upload) -----------------------------------------------------------------------------
    def _upload(self, query: dict[str, list[str]], headers: Any, raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        command = (headers.get("X-Goog-Upload-Command") or "").lower()
        if "upload_id" not in query:
            if command != "start" or (headers.get("X-Goog-Upload-Protocol") or "").lower() != "resumable":
                return self._fail(400, "Uploads must use the resumable protocol (X-Goog-Upload-Command: start).")
            meta = (json.loads(raw or b"{}") or {}).get("file") or {}
            upload_id = uuid.uuid4().hex
            self._uploads[upload_id] = {
                "size": int(headers.get("X-Goog-Upload-Header-Content-Length") or 0),
                "mime_type": headers.get("X-Goog-Upload-Header-Content-Type") or meta.get("mimeType") or "",
                "display_name": meta.get("displayName") or "", "data": b""}
            url = f"{self.base_url}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"  # type: ignore[attr-defined]
            return 200, b"", {"X-Goog-Upload-Status": "active", "X-Goog-Upload-URL": url,
                              "X-Goog-Upload-Chunk-Granularity": "8388608"}
        upload = self._uploads.get(query["upload_id"][0])
        if upload is None:
            return self._fail(404, "Upload session not found.")
        if int(headers.get("X-Goog-Upload-Offset") or 0) != len(upload["data"]):
            return self._fail(400, "X-Goog-Upload-Offset does not match the bytes received so far.")
        upload["data"] += raw
        if "finalize" not in command:
            return 200, b"", {"X-Goog-Upload-Status": "active"}
        del self._uploads[query["upload_id"][0]]
        if len(upload["data"]) != upload["size"]:
            return self._fail(400, f"Upload size {len(upload['data'])} differs from the announced {upload['size']}.")
        name = uuid.uuid4().hex[:12]
        meta = _file_meta(name, upload["mime_type"], len(upload["data"]), display_name=upload["display_name"])
        self.files[name] = {"data": upload["data"], "mime_type": upload["mime_type"], "meta": meta}
        return 200, json.dumps({"file": meta}).encode(), {"X-Goog-Upload-Status": "final"}


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 10**6:06d}Z"


def _file_meta(name: str, mime_type: str, size: int, *, display_name: str = "", source: str = "UPLOADED"
               ) -> dict[str, Any]:
    meta = {"name": f"files/{name}", "mimeType": mime_type, "sizeBytes": str(size), "createTime": _timestamp(),
            "updateTime": _timestamp(), "state": "ACTIVE", "source": source,
            "uri": f"https://generativelanguage.googleapis.com/v1beta/files/{name}"}
    if display_name:
        meta["displayName"] = display_name
    if source == "GENERATED":
        meta["downloadUri"] = f"https://generativelanguage.googleapis.com/download/v1beta/files/{name}:download?alt=media"
    return meta
