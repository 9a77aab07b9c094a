"""Amazon Bedrock through botocore (``boto3.client("bedrock-runtime")``).

Bedrock requests are signed (SigV4) before they reach the HTTP layer, so a cap cannot be
rewritten there. wflo therefore guards at botocore's API-call layer
(``BaseClient._make_api_call``), where the parameters are still a dict: ``Converse`` becomes a
guarded, journaled, replayed LLM call (its ``inferenceConfig.maxTokens`` written in or lowered
to fit the budget). Every other Bedrock runtime operation (``InvokeModel``, the streams) is
refused inside a guarded run unless its host is opted out; ``CountTokens`` is free.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

from .._errors import EgressRefusedError
from ..cost._formats import BY_API, LLMRequest
from ..engine import NOT_REPLAYED, Call, Outcome, finish_call, start_call
from . import _egress

_FREE = ("CountTokens",)


def wrap(client_module: Any) -> None:
    base = client_module.BaseClient
    original = base._make_api_call

    def _make_api_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        if self.meta.service_model.service_name != "bedrock-runtime" or _egress.current_run is None:
            return original(self, operation_name, api_params)
        ctx = _egress.current_run()
        if ctx is None or operation_name in _FREE:
            return original(self, operation_name, api_params)
        parts = urlsplit(self.meta.endpoint_url)
        host = parts.hostname or ""
        if operation_name != "Converse":
            reason = _egress.egress.opted_out(host)
            if reason is None:
                raise EgressRefusedError(
                    client="botocore", method="POST", host=host, path=f"/{operation_name}",
                    reason=f"Bedrock {operation_name} is not an operation wflo can bound (Converse is)",
                )  # fmt: skip
            _egress._record_opt_out(ctx, "botocore", "POST", host, f"/{operation_name}", reason)
            with _egress.understood():
                return original(self, operation_name, api_params)
        return _converse(ctx, original, self, operation_name, api_params, host)

    _make_api_call.__wflo_wrapped__ = original  # type: ignore[attr-defined]
    base._make_api_call = _make_api_call


def _converse(ctx: Any, original: Any, client: Any, operation: str, params: dict[str, Any], host: str) -> Any:
    fmt = BY_API["bedrock"]
    body = dict(params)
    model = fmt.model(body, "")
    req = LLMRequest(fmt, model, "aws", host, f"/model/{model}/converse", "botocore", body)
    call = Call(
        kind="llm", name=model, args=(), kwargs={}, run=ctx, record_input=False,
        meta={"request": req, "api": fmt.api, "provider": "aws", "body": body, "url": f"https://{host}{req.path}"},
    )  # fmt: skip
    call.meta["_args_digest"] = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    replayed = start_call(call)
    if replayed is not NOT_REPLAYED:
        from ._http import exact_body

        return json.loads(exact_body(ctx, call, replayed).get("body") or "{}")
    t0 = time.perf_counter()
    try:
        with _egress.understood():
            response = original(client, operation, req.body if req.changed else params)
    except BaseException as exc:
        finish_call(call, Outcome(error=exc, duration_ms=(time.perf_counter() - t0) * 1000), check_cancel=False)
        raise
    value = {
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(response, default=str),
    }
    finish_call(call, Outcome(value=value, duration_ms=(time.perf_counter() - t0) * 1000), check_cancel=False)
    return response
