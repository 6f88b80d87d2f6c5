"""Background generation runs for the app: threads, progress and cancel — no Streamlit inside.

One manager per data dir lives in ``st.cache_resource``; pages start runs, then poll
:meth:`JobManager.progress` from a fragment. A run keeps going across reruns and page switches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.generation.batch_run import generation_run
from core.config import Settings
from core.generation.engine import GenerationRun, RunConfig, RunProgress
from core.providers.base import CallGate, LLMProvider
from core.workbench import Workbench

ProviderFactory = Callable[[CallGate], LLMProvider]


@dataclass
class Job:
    run: GenerationRun
    thread: threading.Thread
    error: str = ""
    alerts: list[str] = field(default_factory=list)
    grounding_error: str = ""  # why the offline grounding checks after the run stopped, if they did
    grading: tuple[int, int] = (0, 0)  # (checked, to check) while those checks run: the page shows it
    run_done: bool = False  # the run itself has ended; the thread may still be running the grounding checks
    checks: Any = None  # the background grounding checks (core.quality.background), fed as conversations are saved
    cancel_requested: bool = False  # pages say "Cancelling" from the click on, until the run has stopped

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def running(self) -> bool:
        """The run is generating (or finishing its calls in flight); False once only the checks are left."""
        return self.alive and not self.run_done


class JobManager:
    """Runs generation in background threads of this process, at most one per run id."""

    def __init__(self, workbench: Workbench):
        self.workbench = workbench
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, config: RunConfig | None, provider_factory: ProviderFactory, run_id: str | None = None,
              settings: Settings | None = None) -> str:
        """Start a new run (``config``) or resume one (``run_id``); returns the run id at once.

        Args:
            settings: the settings the provider factory was built from (a browser session's provider
                choice), so the run records the provider that really generates; default the workbench's.
        """
        wb = self.workbench
        with self._lock:
            if run_id and run_id in self._jobs and self._jobs[run_id].running:
                return run_id  # a resume while its grounding checks run starts the run again; the checks go on
            # A batch run (config.batch, or a resumed run whose recipe says so) goes through the Batch API.
            run = generation_run(settings or wb.settings, wb.db, wb.corpus, provider_factory, config=config,
                                 run_id=run_id)
            job = Job(run=run, thread=threading.Thread(target=self._work, args=(run.run_id,),
                                                       name=f"job-{run.run_id}", daemon=True))
            run.monitor.on_alert.append(lambda a: job.alerts.append(a.message))
            # Each conversation is checked as it is saved, so the checks never follow the run.
            from core.quality.background import BackgroundChecks

            job.checks = BackgroundChecks(wb.db, wb.embedder, wb.settings.data_path)
            run.on_saved.append(job.checks.submit)
            self._jobs[run.run_id] = job
        job.thread.start()
        return run.run_id

    def _work(self, run_id: str) -> None:
        job = self._jobs[run_id]
        try:
            job.run.run()
        except Exception as e:  # shown on the page; the run row already says incomplete
            job.error = str(e)
        job.run_done = True  # the page says completed or stopped, and offers Resume, while the checks run
        # Evidence first: the offline grounding checks run on what was saved, so Review opens with badges.
        try:
            from core.quality import score_conversations

            checker = None
            if job.checks is not None:  # only the conversations saved last are still queued
                job.checks.finish(progress=lambda done, total: setattr(job, "grading", (done, total)))
                checker = job.checks.checker
                if job.checks.errors:
                    job.grounding_error = job.checks.errors[0]
            score_conversations(self.workbench.db, self.workbench.embedder, run_id=run_id, checker=checker,
                                progress=lambda done, total: setattr(job, "grading", (done, total)))
        except Exception as e:  # grounding is advisory: Review scores on open if this did not finish
            job.grounding_error = str(e)
        finally:
            if job.checks is not None:
                job.checks.close()

    def get(self, run_id: str) -> Job | None:
        return self._jobs.get(run_id)

    def progress(self, run_id: str) -> RunProgress | None:
        job = self._jobs.get(run_id)
        return job.run.progress() if job else None

    def cancel(self, run_id: str) -> None:
        job = self._jobs.get(run_id)
        if job:
            job.cancel_requested = True
            job.run.cancel()

    def active(self) -> list[str]:
        """Runs generating in this process (not those whose grounding checks alone are left), oldest first."""
        return [rid for rid, job in self._jobs.items() if job.running]

    def shutdown(self, timeout: float = 30.0) -> None:
        for job in self._jobs.values():
            job.run.cancel()
        for job in self._jobs.values():
            job.thread.join(timeout)


def eta_text(progress: RunProgress) -> str:
    """How long a running batch still needs, from this session's pace; empty until one conversation is saved."""
    m = progress.metrics
    done_here, elapsed = m.get("saved_this_session") or 0, m.get("elapsed_s") or 0.0
    left = max(progress.target - progress.saved, 0)
    if progress.status not in ("running", "pending") or not done_here or not left:
        return ""
    seconds = elapsed / done_here * left
    if seconds < 90:
        return f"about {max(seconds, 1):.0f} s left"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min left"
    return f"about {seconds / 3600:.1f} h left"
