"""Before a run: how many calls and tokens it will take and what it will cost.

Token counts come from past calls made with the same prompt versions when there are any (the best
predictor), else from a heuristic over prompt and passage lengths. Prices are a setting per model.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.db import Database, dumps
from core.generation.run_config import RunConfig
from core.errors import ConfigError

# US$ per million tokens (input, output); thinking tokens are billed as output. Editable via
# GROUNDWORK_PRICES, since list prices change: "model=in/out;model=in/out".
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.0-flash": (0.10, 0.40),
}
CHARS_PER_TOKEN = 4
BATCH_PRICE_FACTOR = 0.5  # Gemini's Batch API bills half the interactive price (input and output alike)


def parse_prices(text: str) -> dict[str, tuple[float, float]]:
    prices = dict(DEFAULT_PRICES)
    for item in filter(None, (p.strip() for p in (text or "").split(";"))):
        try:
            model, pair = item.split("=")
            price_in, price_out = pair.split("/")
            prices[model.strip()] = (float(price_in), float(price_out))
        except ValueError:
            raise ConfigError(f"GROUNDWORK_PRICES entry {item!r} should look like model=0.30/2.50 "
                              "(US$ per million input/output tokens).") from None
    return prices


@dataclass
class Estimate:
    conversations: int
    calls: float
    prompt_tokens: float
    completion_tokens: float
    thinking_tokens: float
    cost_usd: float | None
    basis: str

    @property
    def total_tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens + self.thinking_tokens


def calls_per_conversation(config: RunConfig) -> dict[str, float]:
    mean_turns = (1 + config.max_turns) / 2
    calls = {"respondent": mean_turns, "correspondent": mean_turns - 1,
             "instruction": 1 / config.instructions_per_sample}
    if config.auto_improve:
        # One judge call per attempt; assume half the conversations need each further attempt.
        extra = sum(0.5 ** k for k in range(1, config.max_improve_attempts))
        calls["judge"] = 1 + extra
        calls["respondent"] *= 1 + extra
        calls["correspondent"] *= 1 + extra
    if getattr(config, "verify_grounding", False):
        calls["verify"] = mean_turns  # the LLM verifier: one call per answer of the kept conversation
    return calls


def _heuristic(purpose: str, config: RunConfig, prompt_chars: dict[str, int], chunk_size: int) -> tuple[float, float]:
    briefing = config.briefing_passages * chunk_size
    if purpose == "respondent":
        history = 150 * CHARS_PER_TOKEN * (config.max_turns - 1) / 2
        return (prompt_chars["respondent"] + config.top_k * chunk_size + history) / CHARS_PER_TOKEN, 300
    if purpose == "correspondent":
        return (prompt_chars["correspondent"] + briefing + 400 * CHARS_PER_TOKEN) / CHARS_PER_TOKEN, 60
    if purpose == "instruction":
        return (prompt_chars["instruction"] + briefing) / CHARS_PER_TOKEN, 40 * config.instructions_per_sample
    if purpose == "verify":  # the answer's passages and its sentences in; a verdict and a quote per sentence out
        return (config.top_k * chunk_size + 1500) / CHARS_PER_TOKEN, 250
    return 1500, 120  # judge


def estimate_run(db: Database, config: RunConfig, model: str, prompt_texts: dict[str, str],
                 chunk_size: int = 1000, prices: dict[str, tuple[float, float]] | None = None,
                 provider: str = "") -> Estimate:
    """Expected calls, tokens and cost of generating ``config.num_dialogs`` conversations."""
    per_conv = calls_per_conversation(config)
    past = {r["purpose"]: r for r in db.rows(
        "SELECT purpose, COUNT(*) AS n, AVG(c.prompt_tokens) AS p, AVG(c.completion_tokens) AS c, "
        "AVG(c.thinking_tokens) AS t FROM calls c JOIN conversations v ON v.id = c.conversation_id "
        "WHERE v.prompt_versions = ? AND v.model = ? GROUP BY purpose",
        [dumps(config.prompt_versions), model])} if config.prompt_versions else {}
    prompt_chars = {k: len(v) for k, v in prompt_texts.items()}
    prompt = completion = thinking = 0.0
    used_history = 0
    for purpose, n_calls in per_conv.items():
        row = past.get(purpose)
        if row and row["n"] >= 3:
            p, c, t = row["p"], row["c"], row["t"] or 0
            used_history += row["n"]
        else:
            p, c = _heuristic(purpose, config, prompt_chars, chunk_size)
            t = 0.0
        prompt += p * n_calls
        completion += c * n_calls
        thinking += t * n_calls
    n = config.num_dialogs
    calls = sum(per_conv.values()) * n
    prompt, completion, thinking = prompt * n, completion * n, thinking * n
    price = (prices or DEFAULT_PRICES).get(model)
    if provider == "local":
        cost = 0.0
    elif price:
        cost = (prompt * price[0] + (completion + thinking) * price[1]) / 1e6
        if getattr(config, "batch", False):
            cost *= BATCH_PRICE_FACTOR
    else:
        cost = None
    basis = (f"past calls with these prompt versions ({used_history} calls)" if used_history
             else "a heuristic from prompt and passage lengths (no past runs with these prompt versions)")
    if getattr(config, "batch", False) and cost:
        basis += "; at Batch API prices (half)"
    return Estimate(n, calls, prompt, completion, thinking, cost, basis)
