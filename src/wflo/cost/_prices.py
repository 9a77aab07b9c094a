"""Model prices: from the ``genai-prices`` package (offline, bundled data), or set by you.

Lookup order: your prices (``wflo.cost.prices.set``) → ``genai-prices`` → a configured fallback →
``UnknownPriceError`` (fail closed: a model whose cost cannot be bounded is refused, never
counted as $0). Every cost carries its source and the data version it came from.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from .._errors import UnknownPriceError, UserError
from ._ledger import to_usd
from ._usage import Usage

_M = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Price:
    """What a model costs, per million tokens (USD, exact)."""

    model: str
    provider: str | None
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    source: str = "user"
    """``"user"``, ``"genai-prices"`` or ``"fallback"``."""
    source_version: str | None = None
    context_window: int | None = None
    tiered: bool = False
    """True when the rate depends on the request size (costs are computed by genai-prices)."""


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one call, with where the price came from."""

    total: Decimal
    input: Decimal
    output: Decimal
    source: str
    source_version: str | None


def _genai_version() -> str:
    try:
        return "genai-prices " + version("genai-prices")
    except Exception:
        return "genai-prices"


def _genai_usage(usage: Usage) -> Any:
    import genai_prices

    kwargs = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cached_input_tokens:
        kwargs["cache_read_tokens"] = usage.cached_input_tokens
    if usage.cache_write_tokens:
        kwargs["cache_write_tokens"] = usage.cache_write_tokens
    return genai_prices.Usage(**kwargs)


class PriceBook:
    """Prices by model. Thread-safe; ``wflo.cost.prices`` is the process-wide book."""

    def __init__(self) -> None:
        self._user: dict[tuple[str, str | None], Price] = {}
        self._fallback: Price | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], Price | None] = {}

    def set(
        self,
        model: str,
        *,
        input_per_mtok: Any,
        output_per_mtok: Any,
        cached_input_per_mtok: Any = None,
        cache_write_per_mtok: Any = None,
        provider: str | None = None,
    ) -> Price:
        """Set a model's price (wins over genai-prices): ``wflo.cost.prices.set("my-ft", input_per_mtok="0.3", output_per_mtok="1.2")``."""
        if not model or not isinstance(model, str):
            raise UserError("model must be a non-empty string")
        price = Price(
            model, provider, to_usd(input_per_mtok, "input_per_mtok"), to_usd(output_per_mtok, "output_per_mtok"),
            None if cached_input_per_mtok is None else to_usd(cached_input_per_mtok, "cached_input_per_mtok"),
            None if cache_write_per_mtok is None else to_usd(cache_write_per_mtok, "cache_write_per_mtok"),
            source="user",
        )  # fmt: skip
        with self._lock:
            self._user[(model, provider)] = price
        return price

    def set_fallback(self, *, input_per_mtok: Any, output_per_mtok: Any) -> Price:
        """A price for every model nobody knows (instead of refusing them). Use with care."""
        price = Price(
            "*",
            None,
            to_usd(input_per_mtok, "input_per_mtok"),
            to_usd(output_per_mtok, "output_per_mtok"),
            source="fallback",
        )
        with self._lock:
            self._fallback = price
        return price

    def clear(self) -> None:
        """Forget user prices and the fallback (tests)."""
        with self._lock:
            self._user.clear()
            self._fallback = None

    def lookup(self, model: str, provider: str | None = None) -> Price:
        """The price of ``model``, or ``UnknownPriceError``."""
        with self._lock:
            user = self._user.get((model, provider)) or self._user.get((model, None))
            fallback = self._fallback
        if user is not None:
            return user
        known = self._from_genai(model, provider)
        if known is not None:
            return known
        if fallback is not None:
            return Price(model, provider, fallback.input_per_mtok, fallback.output_per_mtok, source="fallback")
        raise UnknownPriceError(model=model, provider=provider)

    def _from_genai(self, model: str, provider: str | None) -> Price | None:
        key = (model, provider)
        if key in self._cache:
            return self._cache[key]
        import genai_prices

        price: Price | None = None
        for provider_id in [provider, None] if provider else [None]:
            try:
                calc = genai_prices.calc_price(
                    genai_prices.Usage(input_tokens=1_000_000, output_tokens=1_000_000), model, provider_id=provider_id
                )
            except LookupError:
                continue
            mp = calc.model_price
            cached = getattr(mp, "cache_read_mtok", None)
            write = getattr(mp, "cache_write_mtok", None)
            tiered = any(
                type(getattr(mp, name, None)).__name__ == "TieredPrices" for name in ("input_mtok", "output_mtok")
            )
            price = Price(
                model, calc.provider.id, Decimal(calc.input_price), Decimal(calc.output_price),
                Decimal(cached) if isinstance(cached, Decimal | int | float | str) else None,
                Decimal(write) if isinstance(write, Decimal | int | float | str) else None,
                source="genai-prices", source_version=_genai_version(),
                context_window=getattr(calc.model, "context_window", None), tiered=tiered,
            )  # fmt: skip
            break
        with self._lock:
            self._cache[key] = price
        return price

    def cost(self, model: str, usage: Usage, provider: str | None = None) -> Cost:
        """The exact cost of ``usage`` on ``model`` (cached, cache-write and tiered rates applied)."""
        price = self.lookup(model, provider)
        if price.source == "genai-prices":
            import genai_prices

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                calc = genai_prices.calc_price(_genai_usage(usage), model, provider_id=price.provider)
            return Cost(
                Decimal(calc.total_price),
                Decimal(calc.input_price),
                Decimal(calc.output_price),
                price.source,
                price.source_version,
            )
        uncached = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens)
        cached_rate = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
        write_rate = price.cache_write_per_mtok if price.cache_write_per_mtok is not None else price.input_per_mtok
        inp = (
            uncached * price.input_per_mtok
            + usage.cached_input_tokens * cached_rate
            + usage.cache_write_tokens * write_rate
        ) / _M
        out = usage.output_tokens * price.output_per_mtok / _M
        return Cost(inp + out, inp, out, price.source, price.source_version)

    def worst_case(
        self, model: str, provider: str | None, input_tokens: int, output_tokens: int
    ) -> tuple[Decimal, Decimal]:
        """``(input cost, output cost per token)`` at the worst case, tiers included."""
        price = self.lookup(model, provider)
        if not price.tiered:
            return input_tokens * price.input_per_mtok / _M, price.output_per_mtok / _M
        at_cap = self.cost(model, Usage(input_tokens=input_tokens, output_tokens=max(1, output_tokens)), provider)
        return at_cap.input, at_cap.output / max(1, output_tokens)


prices = PriceBook()
