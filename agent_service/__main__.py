"""`python -m agent_service`: run the agent gRPC service."""

import sys

from agent_service.server import main

sys.exit(main())
