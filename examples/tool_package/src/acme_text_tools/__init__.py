"""An example wflo tool package (see docs/tool-authors.md)."""
