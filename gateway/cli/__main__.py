"""`python -m gateway.cli`: the agentgate command, as the console script runs it."""

import sys

from gateway.cli import main

sys.exit(main())
