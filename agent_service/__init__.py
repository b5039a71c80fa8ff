"""The agent gRPC service: sessions, runs, the event log, model providers and tools."""

import os

# gRPC's fork handlers off, before anything imports grpc (it reads this at import). The
# service forks only to exec at once (tool programs, on libuv's fork under uvloop), and
# those handlers, run in a child while other threads are inside gRPC, crashed it or
# wrote gRPC's check failures into its output. gRPC's own advice for fork-then-exec.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
