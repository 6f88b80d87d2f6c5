"""The app and a scheduled CLI batch on one data dir: both work, neither corrupts the other."""

import os
import subprocess
import sys
import time

from core.db import Database
from fakes.gemini import FakeGemini
from core.review.store import ReviewStore
from core.workbench import Workbench
from tests.conftest import ROOT, make_settings


def test_app_searches_and_reviews_while_a_cli_batch_generates(indexed_wb, embedder):
    data = indexed_wb.settings.data_path
    indexed_wb.close()
    with FakeGemini(latency=0.3) as fake:
        env = {**os.environ, "GROUNDWORK_DATA_DIR": str(data), "GEMINI_API_KEY": "AIza-shared",
               "GOOGLE_GEMINI_BASE_URL": fake.base_url}
        batch = subprocess.Popen([sys.executable, "-m", "core.cli", "generate", "--num-dialogs", "8", "--max-turns",
                                  "2", "--max-concurrency", "2", "--provider", "gemini", "--quiet"],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The app's workbench: opens the store only while it searches, waits briefly if the CLI holds it.
        app = Workbench(make_settings(data), store_idle_close_s=0.2, wait_for_store_s=20, embedder=embedder)
        review = ReviewStore(app.db)
        searches = rated = 0
        try:
            while batch.poll() is None:
                assert app.corpus.search("security deposit", k=2)
                searches += 1
                for row in app.db.rows("SELECT id FROM conversations WHERE rating IS NULL LIMIT 2"):
                    review.rate(row["id"], 4, actor="browser user")
                    rated += 1
                time.sleep(0.3)
            out, err = batch.communicate(timeout=60)
        finally:
            app.close()
    assert batch.returncode == 0, err
    assert "completed — 8/8" in out
    assert searches >= 3 and rated >= 1
    db = Database(data / "groundwork.db")
    assert db.scalar("SELECT COUNT(*) FROM conversations") == 8
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE rating = 4") == rated
