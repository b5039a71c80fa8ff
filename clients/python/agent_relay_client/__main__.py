"""`python -m agent_relay_client chat|tools|history ...`: the terminal chat and its helpers."""

import sys

from agent_relay_client.cli import main

sys.exit(main())
