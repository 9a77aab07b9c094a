"""Workflows the CLI tests run."""

import wflo


@wflo.step
def shout(text: str) -> str:
    return text.upper()


@wflo.workflow(name="greet")
def greet(name: str, punctuation: str = "!") -> str:
    return shout(f"hello {name}") + punctuation


@wflo.workflow(name="explode")
def explode() -> None:
    raise ValueError("kaboom")


@wflo.step
def wait_for_ctrl_c() -> None:
    raise KeyboardInterrupt  # as if the user pressed Ctrl-C while this step ran


@wflo.workflow(name="interrupted")
def interrupted() -> None:
    wait_for_ctrl_c()


@wflo.tool(approval=wflo.Approval(when=lambda amount, **_: amount > 100, approvers=["role:finance"], timeout="1h"))
def refund(order_id: str, amount: float) -> str:
    """Refund an order (over $100 needs finance)."""
    return f"refunded {amount:.2f} on {order_id}"


@wflo.workflow(name="refund_flow")
def refund_flow(order_id: str, amount: float) -> str:
    return refund(order_id, amount)
