"""python -m wflo.cli"""

from . import main

main()
