"""Tools: the ``@wflo.tool`` decorator and the catalog of secure tools."""

from ._tool import Tool, tool

__all__ = ["Tool", "tool"]
